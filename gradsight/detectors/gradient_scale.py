"""vanishing_gradient and exploding_gradient.

The per-layer measure is the gradient-to-weight norm ratio ``r = ||g|| / ||w||``: it says
how far one SGD step moves the layer relative to its size, and it does not depend on the
scale of the loss. A layer is *vanishing* when its ``r`` is a tiny fraction of the
largest ``r`` in the model (the layers near the output still learn; this one does not),
and *exploding* when ``r`` itself is large. Both must hold for ``window`` records.

Divergence gets its own early warning on the whole model (layer ``""``): the total
gradient norm growing by ``exploding_growth`` over consecutive increasing steps, or by
``exploding_jump`` in one step. Diverging runs grow like this for several steps before
the first Inf/NaN, so the warning comes before the ``nan_origin`` error.

Weight norms are measured on detail steps and carried forward (weights move slowly);
gradient norms are measured every step.
"""

from __future__ import annotations

import numpy as np

from ..records.metrics import total_grad_norm
from ..records.step_record import StepRecord
from .finding import FindingLog
from .layout import Layout, fmt
from .streak import Streak
from .thresholds import Thresholds

VANISH_HINT = ("Gradients shrink on their way from the output to this layer: use ReLU-family activations "
               "instead of sigmoid/tanh in deep stacks, He/Xavier initialisation, normalisation layers or "
               "residual connections (a saturation finding often names the cause).")
EXPLODE_HINT = ("Initialise with std ~ 1/sqrt(fan_in) (He/Xavier), add normalisation, lower the learning rate, "
                "or clip gradients with torch.nn.utils.clip_grad_norm_.")
GROWTH_HINT = ("Lower the learning rate (or add warm-up) and clip gradients; a run whose gradients grow like "
               "this usually reaches Inf/NaN within a few steps.")
# Sparse-by-design gradients (only the rows in the batch get any): a small ratio is normal.
_SPARSE_TYPES = ("Embedding", "EmbeddingBag")


class GradientScale:
    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.th = th
        L = len(layout.layers)
        self.w_norm = np.full(L, np.nan)
        self.vanish = Streak(L)
        self.explode = Streak(L)
        self.vanish_g0 = np.full(L, np.nan)
        self.explode_g0 = np.full(L, np.nan)
        self.sparse = np.array([t in _SPARSE_TYPES for t in layout.types], dtype=bool)
        # whole-model growth
        self.prev_total = float("nan")
        self.prev_step = -1
        self.prev_g = np.full(L, np.nan)
        self.run = 0
        self.run_start_total = float("nan")
        self.run_start_step = -1
        self.run_start_g = np.full(L, np.nan)

    def update(self, rec: StepRecord, m: dict, log: FindingLog) -> None:
        th, lay = self.th, self.layout
        w = m["param_norm"]
        known = np.isfinite(w)
        self.w_norm[known] = w[known]
        g = m["param_grad_norm"]
        total = total_grad_norm(rec)
        self._growth(rec, total, g, log)
        wn = self.w_norm
        with np.errstate(invalid="ignore", divide="ignore"):
            r = g / wn
        # an exactly-zero gradient is no gradient at all (dead units, a detached branch, flushed to
        # zero in low precision): those findings name it; "vanishing" is for tiny, non-zero ones
        valid = np.isfinite(r) & (wn > 0) & (g > 0)
        if rec.optimizer_stepped is False or not np.isfinite(total) or valid.sum() < 2:
            # a skipped or non-finite step says nothing about scale (skipped_step / nan_origin)
            log.hold("vanishing_gradient")
            log.hold("exploding_gradient")
            return
        # the reference is the fastest-learning layer that is not itself exploding
        tame = valid & (r <= th.exploding_ratio)
        top = int(np.argmax(np.where(tame, r, -np.inf)))
        ref = r[top] if tame.any() else np.inf
        step = rec.step
        v_hold = valid & (r < th.vanishing_ratio * ref) & ~self.sparse & tame.any()
        self.vanish.update(step, v_hold, valid)
        fresh = v_hold & (self.vanish.count == 1)
        self.vanish_g0[fresh] = g[fresh]
        e_hold = valid & (r > th.exploding_ratio)
        self.explode.update(step, e_hold, valid)
        fresh = e_hold & (self.explode.count == 1)
        self.explode_g0[fresh] = g[fresh]
        for i in np.flatnonzero(v_hold & self.vanish.confirmed(step, th.window)):
            n = int(self.vanish.count[i])
            msg = (f"Gradient norm {fmt(g[i])} is only {fmt(r[i])} of the weight norm ({fmt(wn[i])}), "
                   f"{fmt(r[i] / ref)}x the largest ratio in the model ({lay.describe(top)}: {fmt(ref)})"
                   f"{self._neighbours(rec, i, r, valid)}; {self._trend(self.vanish_g0[i], g[i], n)}.")
            log.report("vanishing_gradient", lay.name(i), "warning", msg, start=int(self.vanish.start[i]),
                       count=n, hint=VANISH_HINT, phase="backward", value=float(r[i] / ref),
                       threshold=th.vanishing_ratio)
        for i in np.flatnonzero(e_hold & self.explode.confirmed(step, th.window)):
            n = int(self.explode.count[i])
            msg = (f"Gradient norm {fmt(g[i])} is {fmt(r[i])}x the weight norm ({fmt(wn[i])})"
                   f"{self._neighbours(rec, i, r, valid)}; {self._trend(self.explode_g0[i], g[i], n)}.")
            log.report("exploding_gradient", lay.name(i), "warning", msg, start=int(self.explode.start[i]),
                       count=n, hint=EXPLODE_HINT, phase="backward", value=float(r[i]),
                       threshold=th.exploding_ratio)

    def _growth(self, rec: StepRecord, total: float, g: np.ndarray, log: FindingLog) -> None:
        """Early warning: the total gradient norm keeps multiplying."""
        th = self.th
        if not np.isfinite(total) or rec.optimizer_stepped is False or total <= 0:
            self.prev_total, self.run = float("nan"), 0
            return
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
        if (self.run >= 2 and growth >= th.exploding_growth) or (self.run >= 1 and jump >= th.exploding_jump):
            lay = self.layout
            with np.errstate(invalid="ignore", divide="ignore"):
                per = g / self.run_start_g
            per = np.where(np.isfinite(per), per, -np.inf)
            fastest = int(np.argmax(per))
            also = f"; fastest in {lay.describe(fastest)} ({fmt(per[fastest])}x)" if per[fastest] > 0 else ""
            msg = (f"Total gradient norm grew {fmt(growth)}x in {self.run} step(s) "
                   f"({fmt(self.run_start_total)} -> {fmt(total)}){also}: the run is diverging.")
            log.report("exploding_gradient", "", "warning", msg, start=self.run_start_step + 1, count=self.run,
                       hint=GROWTH_HINT, phase="backward", value=float(growth), threshold=th.exploding_growth)
        self.prev_total, self.prev_step = total, rec.step
        self.prev_g[:] = g

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
