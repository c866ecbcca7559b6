"""vanishing_gradient and exploding_gradient.

The per-layer measure is the gradient-to-weight norm ratio ``r = ||g|| / ||w||``: it says
how far one SGD step moves the layer relative to its size, and it does not depend on the
scale of the loss. A layer is *vanishing* when its ``r`` is a tiny fraction of the
largest ``r`` in the model (judged per role: attention query/key projections,
embeddings, normalisation gains and biases have small ratios by construction, see
:mod:`.roles`), and *exploding* when ``r`` itself is large.

Evidence: a condition that holds is ``suspected`` at once and ``confirmed`` after
``window`` records; it is confirmed at once when the ratio is ``confirm_factor`` past
its threshold, or when the ratio grows (or shrinks) geometrically through
``depth_layers`` consecutive layers — the signature of a scale problem through depth,
which one batch cannot fake.

One cause, one row: all layers of one kind in one record are one finding that names the
most upstream one (parameter-free pass-through layers never carry a ratio) and lists
the rest in ``affected``.

Divergence gets its own early warning on the whole model (layer ``""``): the total
gradient norm growing by ``exploding_growth`` over consecutive increasing steps, or by
``exploding_jump`` in one step. It comes first, and per-layer scale findings that begin
with it are folded into it. Weight norms are measured on detail steps and carried
forward (weights move slowly); gradient norms are measured every step.
"""

from __future__ import annotations

import numpy as np

from ..records.metrics import total_grad_norm
from ..records.step_record import StepRecord
from .detector import Context
from .finding import Finding
from .layout import Layout, fmt
from .roles import ROLES, layer_roles
from .streak import Streak
from .thresholds import Thresholds

VANISH = "vanishing_gradient"
EXPLODE = "exploding_gradient"
VANISH_HINT = ("Gradients shrink on their way from the output to this layer: use ReLU-family activations "
               "instead of sigmoid/tanh in deep stacks, He/Xavier initialisation, normalisation layers or "
               "residual connections (a saturation finding often names the cause).")
EXPLODE_HINT = ("Initialise with std ~ 1/sqrt(fan_in) (He/Xavier), add normalisation, lower the learning rate, "
                "or clip gradients with torch.nn.utils.clip_grad_norm_.")
GROWTH_HINT = ("Lower the learning rate (or add warm-up) and clip gradients; a run whose gradients grow like "
               "this usually reaches Inf/NaN within a few steps.")
DIVERGENCE_KEY = "divergence"
LAYERS_KEY = "layers"


class GradientScale:
    kinds = (VANISH, EXPLODE)

    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.th = th
        L = len(layout.layers)
        self.w_norm = np.full(L, np.nan)
        self.vanish = Streak(L)
        self.explode = Streak(L)
        self.vanish_g0 = np.full(L, np.nan)
        self.explode_g0 = np.full(L, np.nan)
        self.limits: np.ndarray | None = None   # per-layer vanishing threshold (by role)
        self.roles: np.ndarray | None = None
        # whole-model growth
        self.prev_total = float("nan")
        self.prev_step = -1
        self.prev_g = np.full(L, np.nan)
        self.run = 0
        self.run_start_total = float("nan")
        self.run_start_step = -1
        self.run_start_g = np.full(L, np.nan)

    def _bind_roles(self) -> None:
        lay, th = self.layout, self.th
        if self.roles is not None:
            return
        self.roles = layer_roles(lay.layers, lay.types, lay.param_layer, lay.param_names)
        by_role = {"weight": th.vanishing_ratio, "attention_qk": th.vanishing_ratio_attention,
                   "embedding": th.vanishing_ratio_embedding, "norm": th.vanishing_ratio_norm,
                   "bias": th.vanishing_ratio_norm}
        self.limits = np.array([by_role[ROLES[r]] for r in self.roles])

    def update(self, rec: StepRecord, metrics: dict, ctx: Context) -> list[Finding]:
        self._bind_roles()
        m = metrics
        w = m["param_norm"]
        known = np.isfinite(w)
        self.w_norm[known] = w[known]
        g = m["param_grad_norm"]
        total = total_grad_norm(rec)
        out: list[Finding] = []
        growth = self._growth(rec, total, g)
        if growth is not None:
            ctx.diverging = growth
            out.append(growth)
        wn = self.w_norm
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            r = g / wn
        # an exactly-zero gradient is no gradient at all (dead units, a detached branch, flushed to
        # zero in low precision): those findings name it; "vanishing" is for tiny, non-zero ones
        valid = np.isfinite(r) & (wn > 0) & (g > 0)
        if ctx.skipped or ctx.nonfinite or not np.isfinite(total) or valid.sum() < 2:
            # a skipped or non-finite step says nothing about scale (skipped_step / nan_origin)
            ctx.hold(VANISH)
            ctx.hold(EXPLODE)
            return out
        th, step = self.th, rec.step
        # the reference is the fastest-learning layer that is not itself exploding
        tame = valid & (r <= th.exploding_ratio)
        top = int(np.argmax(np.where(tame, r, -np.inf)))
        ref = r[top] if tame.any() else np.inf
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            rel = r / ref
        v_hold = valid & (rel < self.limits) & tame.any()
        self.vanish.update(step, v_hold, valid)
        fresh = v_hold & (self.vanish.count == 1)
        self.vanish_g0[fresh] = g[fresh]
        e_hold = valid & (r > th.exploding_ratio)
        self.explode.update(step, e_hold, valid)
        fresh = e_hold & (self.explode.count == 1)
        self.explode_g0[fresh] = g[fresh]
        chain = self._depth_chain(rec, r, valid)
        if v_hold.any():
            strong = (rel < self.limits / th.confirm_factor) | (chain <= -(th.depth_layers - 1))
            out.append(self._vanishing(rec, np.flatnonzero(v_hold), r, rel, g, wn, top, ref, valid, strong))
        if e_hold.any():
            strong = (r > th.exploding_ratio * th.confirm_factor) | (chain >= th.depth_layers - 1)
            out.append(self._exploding(rec, np.flatnonzero(e_hold), r, g, wn, valid, strong))
        return out

    # --- per-layer findings, one row per kind ------------------------------------------------
    def _status(self, streak: Streak, idx: np.ndarray, step: int, strong: np.ndarray) -> tuple[bool, int, int]:
        confirmed = bool((streak.confirmed(step, self.th.window)[idx] | strong[idx]).any())
        start = int(streak.start[idx].min())
        count = int(streak.count[idx].max())
        return confirmed, start, count

    def _vanishing(self, rec, idx, r, rel, g, wn, top, ref, valid, strong) -> Finding:
        lay = self.layout
        confirmed, start, count = self._status(self.vanish, idx, rec.step, strong)
        i = self._most_upstream(rec, idx)
        role = ROLES[self.roles[i]]
        limit = float(self.limits[i])
        others = f" and {len(idx) - 1} more layer(s)" if len(idx) > 1 else ""
        judged = "" if role == "weight" else f" (threshold {fmt(limit)} for its role, {role.replace('_', ' ')})"
        msg = (f"Gradient norm {fmt(g[i])} is only {fmt(r[i])} of the weight norm ({fmt(wn[i])}) in "
               f"{lay.describe(i)}{others}, {fmt(rel[i])}x the largest ratio in the model "
               f"({lay.describe(top)}: {fmt(ref)}){judged}{self._neighbours(rec, i, r, valid)}; "
               f"{self._trend(self.vanish_g0[i], g[i], int(self.vanish.count[i]))}.")
        return self._finding(rec, VANISH, i, idx, confirmed, start, count, msg, VANISH_HINT, float(rel[i]), limit)

    def _exploding(self, rec, idx, r, g, wn, valid, strong) -> Finding:
        lay, th = self.layout, self.th
        confirmed, start, count = self._status(self.explode, idx, rec.step, strong)
        i = self._most_upstream(rec, idx)
        others = f"; {len(idx) - 1} more layer(s) after it too" if len(idx) > 1 else ""
        msg = (f"Gradient norm {fmt(g[i])} is {fmt(r[i])}x the weight norm ({fmt(wn[i])}) in {lay.describe(i)}"
               f"{others}{self._neighbours(rec, i, r, valid)}; "
               f"{self._trend(self.explode_g0[i], g[i], int(self.explode.count[i]))}.")
        return self._finding(rec, EXPLODE, i, idx, confirmed, start, count, msg, EXPLODE_HINT, float(r[i]),
                             th.exploding_ratio)

    def _finding(self, rec, kind, i, idx, confirmed, start, count, msg, hint, value, threshold) -> Finding:
        lay = self.layout
        affected = tuple(lay.name(j) for j in self._upstream_order(rec, idx))
        if not confirmed:
            msg = (f"Suspected (evidence from {count} of the {self.th.window} records needed): " + msg)
        return Finding(step=start, last_step=rec.step, count=count, layer=lay.name(i), kind=kind,
                       severity="warning" if confirmed else "info", status="confirmed" if confirmed else "suspected",
                       message=msg, hint=hint, phase="backward", value=value, threshold=threshold,
                       affected=affected, key=LAYERS_KEY)

    def _upstream_order(self, rec: StepRecord, idx: np.ndarray) -> list[int]:
        pos = {layer: k for k, layer in enumerate(rec.forward_order)}
        return sorted((int(j) for j in idx), key=lambda j: (pos.get(j, len(pos) + j), j))

    def _most_upstream(self, rec: StepRecord, idx: np.ndarray) -> int:
        return self._upstream_order(rec, idx)[0]

    def _depth_chain(self, rec: StepRecord, r: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Per layer: how many consecutive layers (in forward order, layers with a ratio) lead
        to it with the ratio shrinking by ``depth_growth`` or more at each one (positive: it
        grows toward the input, as in an explosion through depth; negative: it shrinks)."""
        order = [i for i in (rec.forward_order or range(len(r))) if valid[i]]
        chain = np.zeros(len(r), dtype=np.int64)
        f = self.th.depth_growth
        up = down = 0
        for k in range(len(order) - 2, -1, -1):  # from the output toward the input
            a, b = r[order[k]], r[order[k + 1]]
            up = up + 1 if a >= f * b else 0
            down = down + 1 if a * f <= b else 0
            chain[order[k]] = up if up else -down
        return chain

    # --- divergence --------------------------------------------------------------------------
    def _growth(self, rec: StepRecord, total: float, g: np.ndarray) -> Finding | None:
        """Early warning: the total gradient norm keeps multiplying."""
        th = self.th
        if not np.isfinite(total) or rec.optimizer_stepped is False or total <= 0:
            self.prev_total, self.run = float("nan"), 0
            return None
        prev = self.prev_total
        if np.isfinite(prev) and total > prev:
            if self.run == 0:
                self.run_start_total, self.run_start_step = prev, self.prev_step
                self.run_start_g[:] = self.prev_g
            self.run += 1
        else:
            self.run = 0
        jump = total / prev if np.isfinite(prev) else 1.0
        growth = total / self.run_start_total if self.run else 1.0
        found = None
        if (self.run >= 2 and growth >= th.exploding_growth) or (self.run >= 1 and jump >= th.exploding_jump):
            lay = self.layout
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                per = g / self.run_start_g
            per = np.where(np.isfinite(per), per, -np.inf)
            fastest = int(np.argmax(per))
            also = f"; fastest in {lay.describe(fastest)} ({fmt(per[fastest])}x)" if per[fastest] > 0 else ""
            msg = (f"Total gradient norm grew {fmt(growth)}x in {self.run} step(s) "
                   f"({fmt(self.run_start_total)} -> {fmt(total)}){also}: the run is diverging.")
            found = Finding(step=self.run_start_step + 1, last_step=rec.step, count=self.run, layer="",
                            kind=EXPLODE, severity="warning", message=msg, hint=GROWTH_HINT, phase="backward",
                            value=float(growth), threshold=th.exploding_growth, key=DIVERGENCE_KEY)
        self.prev_total, self.prev_step = total, rec.step
        self.prev_g[:] = g
        return found

    def _neighbours(self, rec: StepRecord, i: int, r: np.ndarray, valid: np.ndarray) -> str:
        """The ratio of the nearest layers with parameters before and after ``i`` in the data
        flow (through parameter-free layers such as activations), else in model order."""
        lay = self.layout
        before = _param_neighbours(rec, i, valid, upstream=True)
        after = _param_neighbours(rec, i, valid, upstream=False)
        if not before and not after:
            order = np.flatnonzero(valid)
            k = int(np.searchsorted(order, i))
            before = [int(order[k - 1])] if k > 0 else []
            after = [int(order[k + 1])] if k + 1 < len(order) and order[k] == i else []
        parts = [f"{lay.describe(j)} {fmt(r[j])} (before it)" for j in before[:2]]
        parts += [f"{lay.describe(j)} {fmt(r[j])} (after it)" for j in after[:2]]
        return f"; the same ratio in neighbouring layers: {', '.join(parts)}" if parts else ""

    @staticmethod
    def _trend(g0: float, g: float, n: int) -> str:
        if n < 2 or not np.isfinite(g0) or g0 <= 0:
            return f"for {n} step(s)"
        return f"for {n} steps, gradient norm {fmt(g0)} -> {fmt(g)} ({fmt(g / g0)}x)"


def _param_neighbours(rec: StepRecord, i: int, has: np.ndarray, upstream: bool, depth: int = 4) -> list[int]:
    """Nearest layers with a (valid) parameter ratio feeding ``i`` (or fed by it)."""
    if upstream:
        step = lambda j: rec.input_sources.get(j, ())  # noqa: E731
    else:
        step = lambda j: [c for c, srcs in rec.input_sources.items() if j in srcs]  # noqa: E731
    found: list[int] = []
    frontier, seen = list(step(i)), {i}
    for _ in range(depth):
        nxt = []
        for j in frontier:
            if j in seen:
                continue
            seen.add(j)
            if has[j]:
                found.append(j)
            else:
                nxt.extend(step(j))
        if found or not nxt:
            break
        frontier = nxt
    return found
