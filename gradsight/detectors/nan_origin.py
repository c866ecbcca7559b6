"""nan_origin: where the first NaN or Inf of a step appears — one origin per step.

Forward: the first module to finish (children finish before their parents, so this is
the innermost) whose output is non-finite while its inputs and all parameters under it
are finite. Backward: the module whose gradient w.r.t. its output is finite but whose
backward produced a non-finite gradient — for its inputs (the first non-finite output
gradient belongs to a module that fed it) or for its own parameters. Otherwise, a
parameter that became non-finite in an update with finite gradients, or a non-finite
model input. Modules downstream of the origin only propagate, and later steps whose
parameters are already non-finite have no new origin.

All of it reads counts that capture takes anyway (no host sync per module). Parameter
norms are measured on detail steps only, so between them parameter finiteness is
inferred: a parameter turns non-finite when the optimizer steps with a non-finite
gradient. With ``nan_trace="op"`` the record also carries op-level events; the
finding then names the aten op and the source line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..records.fields import F
from ..records.step_record import StepRecord
from .layout import Layout, cannot_create_nonfinite, fmt, nonfinite_counts

KIND = "nan_origin"
TRACE_HINT = 'For the exact op and source line, watch with gs.watch(model, nan_trace="op").'

# What usually fixes a NaN/Inf out of a given op (forward).
OP_HINTS = {
    "log": "log of a value <= 0: clamp the argument (x.clamp_min(eps)), or use log1p / log_softmax.",
    "log2": "log of a value <= 0: clamp the argument (x.clamp_min(eps)).",
    "log10": "log of a value <= 0: clamp the argument (x.clamp_min(eps)).",
    "sqrt": "sqrt of a negative value, or its gradient at 0 (1/(2*sqrt(0)) = Inf): clamp the argument "
            "(x.clamp_min(eps)) before the sqrt.",
    "rsqrt": "rsqrt of a value <= 0: add an epsilon (x + eps).rsqrt().",
    "div": "division by zero: add an epsilon to the denominator or mask zero counts.",
    "pow": "pow of a negative base with a fractional exponent, or an overflow: clamp the base.",
    "exp": "exp overflowed: subtract the max first (as logsumexp/softmax do) or clamp the argument.",
    "acos": "acos/asin outside [-1, 1] (or its gradient at +-1): clamp to [-1 + eps, 1 - eps].",
    "asin": "acos/asin outside [-1, 1] (or its gradient at +-1): clamp to [-1 + eps, 1 - eps].",
    "atanh": "atanh at +-1: clamp to (-1 + eps, 1 - eps).",
}
OVERFLOW_HINT = ("Values grew beyond the dtype's range: usually a diverging run (see exploding_gradient) — "
                 "lower the learning rate, clip gradients, or normalise the inputs of this layer.")
GENERIC_HINT = ("Look in this module's forward for log/sqrt/div/pow/exp of values outside their domain "
                "(log of 0 or a negative, x/0) and clamp or add an epsilon.")


@dataclass
class Origin:
    """Where a step's first non-finite value appeared (before deciding to report it)."""

    phase: str          # "forward" | "backward" | ""
    layer: int          # layer index; -1 = outside the model / the model as a whole
    message: str
    hint: str
    value: float = float("nan")
    op: str = ""
    source: str = ""
    backward: bool = False  # a gradient fault (GradScaler overflows look like this)


class NanOrigin:
    def __init__(self, layout: Layout):
        self.layout = layout
        self._bad: np.ndarray | None = None        # [P] non-finite after the last update
        self._explained: np.ndarray | None = None  # [P] its non-finiteness is already reported
        # multi-process jobs (set by the watcher): gradients are averaged across ranks after gradsight
        # reads them (DDP, FSDP), and whether the other ranks' packets say who went non-finite
        self.reduced = False
        self.peers_known = False

    # --- state ----------------------------------------------------------------------------
    def _ensure(self, rec: StepRecord) -> None:
        P = len(rec.param_layer)
        if self._bad is None or self._bad.shape[0] != P:
            # before the first record nothing was measured: assume finite (a parameter that starts
            # non-finite then shows as the forward origin at its own layer)
            self._bad = np.zeros(P, dtype=bool)
            self._explained = np.zeros(P, dtype=bool)

    def _advance(self, rec: StepRecord, pgrad_bad: np.ndarray, reported: bool) -> None:
        """Parameter finiteness after this step's update: measured, or inferred."""
        stepped = rec.optimizer_stepped is True or (rec.optimizer_stepped is None and _no_scaler(rec))
        became = pgrad_bad & stepped
        measured = rec.param_seen[:, 0]
        bad = self._bad | became | _bad_at_forward(rec)
        bad[measured] = ~np.isfinite(rec.param_sumsq[measured])
        if reported:  # what this step's origin made non-finite needs no report of its own
            self._explained |= bad & ~self._bad
        self._explained &= bad
        self._bad = bad

    # --- detection --------------------------------------------------------------------------
    def locate(self, rec: StepRecord) -> Origin | None:
        """The step's origin, or None if everything new is finite. Does not change state."""
        self._ensure(rec)
        act_n = nonfinite_counts(rec.act)
        grad_n = nonfinite_counts(rec.grad)
        pseen = rec.param_seen[:, 1]
        pgrad_bad = pseen & ~np.isfinite(rec.param_grad_sumsq)
        if not (act_n.any() or grad_n.any() or pgrad_bad.any()):
            return self._update_origin(rec)
        if act_n.any():
            return self._forward(rec, act_n)
        if not np.isfinite(rec.act[:, F["sumsq"]]).any() and rec.act.size:
            return Origin("", -1, "Gradients are non-finite, and activations are not captured "
                          "(activations=False), so the forward cannot be checked.", TRACE_HINT,
                          value=float(grad_n.sum()), backward=True)
        return self._backward(rec, grad_n, pgrad_bad)

    def _forward(self, rec: StepRecord, act_n: np.ndarray) -> Origin | None:
        lay = self.layout
        sub_bad = self._subtree_bad()
        outside = _bad_at_forward(rec) & ~self._bad  # non-finite when the forward ran, not by an update we saw
        if outside.any():
            owners = {int(lay.param_layer[j]): int(j) for j in np.flatnonzero(outside)[::-1]}
            for i in rec.forward_order:
                if i in owners and act_n[i] > 0:
                    return self._param_origin(rec, owners[i], before=True, outside=True)
        for i in rec.forward_order:
            # dropout, identity, ReLU, ...: a NaN at their output came in with their input (which
            # capture may not see: an identity returns its input tensor itself)
            if act_n[i] > 0 and rec.input_finite[i] != 0 and not sub_bad[i] \
                    and not cannot_create_nonfinite(lay.types[i]):
                return self._forward_origin(rec, i)
        root = rec.forward_order[-1] if rec.forward_order else -1
        if root >= 0 and rec.input_finite[root] == 0 and lay.parent[root] < 0:
            return Origin("forward", root, f"The input of {lay.describe(root)} already holds NaN/Inf before "
                          "any layer ran: the data (or code before the model) is non-finite.",
                          "Check the data pipeline: torch.isfinite(batch).all(), normalisation by a zero "
                          "std, missing values read as NaN.")
        new_bad = self._bad & ~self._explained
        if new_bad.any():
            return self._param_origin(rec, int(np.flatnonzero(new_bad)[0]), before=True)
        return None  # non-finite parameters, already reported: no new origin

    def _forward_origin(self, rec: StepRecord, i: int) -> Origin:
        lay = self.layout
        r = rec.act[i]
        n_nan, n_pos, n_neg = (int(r[F[k]]) for k in ("nan", "posinf", "neginf"))
        parts = [f"{n} {w}" for n, w in ((n_nan, "NaN"), (n_pos, "+Inf"), (n_neg, "-Inf")) if n]
        numel = int(rec.act_numel[i])
        op = source = ""
        kinds = {k for n, k in ((n_nan, "nan"), (n_pos, "+inf"), (n_neg, "-inf")) if n}
        event = _pick_event(rec.nan_events, "forward", lay, i, kinds)
        where = ""
        if event is not None:
            op, source = event.get("op", ""), event.get("source", "")
            where = f" The first one comes from {op}" + (f" at {source}" if source else "") + "."
        overflow = n_nan == 0
        msg = (f"{lay.describe(i)} returned {' and '.join(parts)} among {numel:,} values from finite inputs "
               f"and finite parameters{' (an overflow)' if overflow else ''}.{where}")
        hint = _op_hint(op) or (OVERFLOW_HINT if overflow else GENERIC_HINT)
        if not op:
            hint += " " + TRACE_HINT
        return Origin("forward", i, msg, hint, value=float(n_nan + n_pos + n_neg), op=op, source=source)

    def _backward(self, rec: StepRecord, grad_n: np.ndarray, pgrad_bad: np.ndarray) -> Origin | None:
        lay = self.layout
        order = rec.backward_order
        pos = {layer: k for k, layer in enumerate(order)}
        first = next((k for k in order if grad_n[k] > 0), None)
        best: tuple[float, Origin] | None = None
        if first is not None:
            best = (pos[first], self._grad_origin(rec, first, grad_n, pos))
        for j in np.flatnonzero(pgrad_bad):
            owner = int(lay.param_layer[j])
            if grad_n[owner] > 0:
                continue  # its output gradient was already non-finite: propagation
            at = pos.get(owner, len(order)) + 0.5
            if best is None or at < best[0]:
                best = (at, self._param_grad_origin(rec, int(j), owner))
        if best is None:
            return None
        origin = self._with_backward_event(rec, best[1])
        if "float16" in rec.grad_dtypes.values() and rec.optimizer_stepped is None and _no_scaler(rec):
            origin.hint += (" With a GradScaler, Inf gradients are expected now and then: pass scaler= and "
                            "optimizer= to gs.watch so that skipped steps are recognised as such.")
        return origin

    def _grad_origin(self, rec: StepRecord, k: int, grad_n: np.ndarray, pos: dict) -> Origin:
        """The gradient w.r.t. ``k``'s output is the first non-finite one: which module made it?"""
        lay = self.layout
        consumers = sorted((c for c, srcs in rec.input_sources.items() if k in srcs and c in pos
                            and grad_n[c] == 0), key=lambda c: pos[c])
        culprit = consumers[0] if consumers else None
        if culprit is None:  # k's output was used by its parent's own code
            for a in lay.ancestors(k):
                if grad_n[a] == 0:
                    culprit = a
                    break
        count = int(grad_n[k])
        if culprit is None:
            return Origin("backward", -1, f"The gradient arriving at the model's output is already non-finite "
                          f"({count:,} NaN/Inf values in the gradient of {lay.describe(k)}'s output): the loss, "
                          "or code between the model and backward(), produced it.",
                          "Check the loss for log(0), sqrt(0), division by a zero count or an overflowing "
                          "exp; clamp or add an epsilon. " + TRACE_HINT, value=float(count), backward=True)
        g = _norm(rec.grad[culprit])
        msg = (f"The backward of {lay.describe(culprit)} turned a finite output gradient (norm {fmt(g)}) into "
               f"a non-finite gradient for its input from {lay.describe(k)} ({count:,} NaN/Inf values).")
        return Origin("backward", culprit, msg, _BACKWARD_HINT, value=float(count), backward=True)

    def _param_grad_origin(self, rec: StepRecord, j: int, owner: int) -> Origin:
        lay = self.layout
        g = _norm(rec.grad[owner])
        out = f"a finite output gradient (norm {fmt(g)})" if np.isfinite(g) else "its output gradient"
        msg = (f"The backward of {lay.describe(owner)} turned {out} into a non-finite gradient for its "
               f"parameter {lay.param_names[j]!r}.")
        return Origin("backward", owner, msg, _BACKWARD_HINT, backward=True)

    def _with_backward_event(self, rec: StepRecord, origin: Origin) -> Origin:
        lay = self.layout
        event = _pick_event(rec.nan_events, "backward", lay, origin.layer)
        if event is None:
            origin.hint += " " + TRACE_HINT
            return origin
        fwd_op = event.get("forward_op") or event.get("op", "")
        node = event.get("node", "")
        origin.op = fwd_op
        origin.source = event.get("source", "")
        where = f" It happens in the gradient of {fwd_op}" + (f" ({node})" if node else "") + \
            (f", called at {origin.source}" if origin.source else "") + "."
        masked = _pick_event(rec.nan_events, "forward", lay, origin.layer)
        if masked is not None:
            where += (f" In the forward, {masked.get('op')}" + (f" at {masked.get('source')}" if masked.get("source")
                      else "") + " already produced NaN/Inf that was masked (e.g. by torch.where); "
                      "the backward still multiplies by it.")
            origin.hint = ("torch.where/masking does not stop the masked branch's gradient: make the input "
                           "safe before the op, e.g. torch.sqrt(torch.where(x > 0, x, 1)) then mask the result.")
        else:
            origin.hint = _op_hint(fwd_op) or origin.hint
        origin.message += where
        return origin

    def _update_origin(self, rec: StepRecord) -> Origin | None:
        """Nothing non-finite in forward or backward: did a parameter go non-finite in an update?"""
        measured = rec.param_seen[:, 0]
        became = measured & ~np.isfinite(rec.param_sumsq) & ~self._bad
        if not became.any():
            return None
        return self._param_origin(rec, int(np.flatnonzero(became)[0]), before=False)

    def _param_origin(self, rec: StepRecord, j: int, before: bool, outside: bool = False) -> Origin:
        lay = self.layout
        owner = int(lay.param_layer[j])
        name = lay.param_names[j]
        if outside and self.reduced and not self.peers_known:
            msg = (f"Parameter {name!r} of {lay.describe(owner)} was already non-finite when this step's forward "
                   "ran, although every value and gradient gradsight read on this rank in the last step was "
                   "finite. In this multi-process job gradients are averaged across ranks after gradsight reads "
                   "them, so another rank's NaN/Inf most likely reached this rank through the all-reduce and the "
                   "last optimizer step wrote it into the weights; the NaN/Inf output of the layer follows from "
                   "it. gradsight's cross-rank part is off here, so it cannot name that rank.")
            hint = ("Watch with the cross-rank part on in every rank (gs.watch(model) after "
                    "init_process_group, distributed=True) to have rank_nonfinite name the rank and layer; "
                    "if no rank went non-finite, look for code that writes to the parameters between steps.")
        elif outside:
            msg = (f"Parameter {name!r} of {lay.describe(owner)} was already non-finite when this step's forward ran, "
                   "although the last update gradsight saw left it finite: it was changed outside the training "
                   "step, and the NaN/Inf output of the layer follows from it.")
            hint = ("Look for code that writes to the parameters between steps: a manual edit under torch.no_grad(), "
                    "load_state_dict of a bad checkpoint, a custom weight constraint or EMA copy.")
        elif before:
            msg = (f"Parameter {name!r} of {lay.describe(owner)} is non-finite before this step's forward "
                   "(it was never seen finite, or went non-finite without a reported cause).")
            hint = "Check the initialisation and any code that writes to the parameters (load_state_dict, manual edits)."
        else:
            lr = f" (learning rate {fmt(rec.lrs[0])})" if rec.lrs else ""
            msg = (f"Parameter {name!r} of {lay.describe(owner)} became non-finite in an optimizer update{lr} "
                   "although every gradient was finite.")
            hint = ("Check the optimizer settings (eps=0 in Adam/RMSprop divides by zero; an Inf learning rate) "
                    "and any custom update code.")
        return Origin("", owner, msg, hint)

    def peer(self, rec: StepRecord, ranks: tuple[int, ...]) -> Origin | None:
        """Rank(s) ``ranks`` produced a NaN/Inf at ``rec``'s step while this rank's own forward and
        backward stayed finite (known after the cross-rank exchange, so after :meth:`finish`). With
        gradients averaged across ranks, theirs reached this rank's parameter gradients in the
        all-reduce, after gradsight read them, and the optimizer step wrote them into the weights."""
        if not self.reduced or not ranks:
            return None
        self._ensure(rec)
        grads = rec.param_seen[:, 1]
        if not grads.any():
            return None
        stepped = rec.optimizer_stepped is not False
        if stepped:  # the weights it updated are non-finite now, and explained by this finding
            self._explained |= grads & ~self._bad
            self._bad |= grads
        who = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
        wrote = ", and this step's optimizer update wrote them into the weights" if stepped else \
            " (the optimizer step was skipped, so the weights stayed finite)"
        msg = (f"This rank's forward and backward were finite at step {rec.step}, but {who} produced "
               f"non-finite values in the same step: the gradient all-reduce averaged them into this rank's "
               f"parameter gradients{wrote}. This rank inherited the NaN/Inf; it did not produce it "
               "(rank_nonfinite names the origin rank and layer).")
        hint = (f"Debug {who}: its batch at step {rec.step} (torch.isfinite(batch).all()) and the layer "
                "rank_nonfinite names. Nothing on this rank needs fixing.")
        return Origin("backward", -1, msg, hint, value=float(ranks[0]), backward=True)

    def _subtree_bad(self) -> np.ndarray:
        lay = self.layout
        out = np.zeros(len(lay.layers), dtype=bool)
        for j in np.flatnonzero(self._bad):
            owner = int(lay.param_layer[j])
            out[owner] = True
            out[lay.ancestors(owner)] = True
        return out

    def mark_updated(self, pgrad_bad: np.ndarray) -> None:
        """A step decided late turned out to be a real update with these non-finite gradients."""
        if self._bad is not None and self._bad.shape == pgrad_bad.shape:
            self._explained |= pgrad_bad & ~self._bad
            self._bad |= pgrad_bad

    def finish(self, rec: StepRecord, reported: bool) -> None:
        pgrad_bad = rec.param_seen[:, 1] & ~np.isfinite(rec.param_grad_sumsq)
        self._advance(rec, pgrad_bad, reported)


_BACKWARD_HINT = ("A finite forward with a non-finite backward is usually a function whose derivative is "
                  "infinite where it was evaluated: sqrt/pow at 0, log at 0, acos at +-1, or a torch.where "
                  "whose masked branch is NaN/Inf (its gradient still flows). Clamp the input before the op.")


def _bad_at_forward(rec: StepRecord) -> np.ndarray:
    """[P] parameters capture saw non-finite while this step's forward ran."""
    f = rec.param_finite_at_forward
    if f is None or len(f) != len(rec.param_layer):
        return np.zeros(len(rec.param_layer), dtype=bool)
    return np.asarray(f) == 0


def _no_scaler(rec: StepRecord) -> bool:
    return rec.grad_scale == 1.0


def _norm(raw_row: np.ndarray) -> float:
    s = raw_row[F["sumsq"]]
    return float(np.sqrt(s)) if np.isfinite(s) and s >= 0 else float("nan")


def _event_dict(e) -> dict:
    return e if isinstance(e, dict) else (e.as_dict() if hasattr(e, "as_dict") else vars(e))


def _pick_event(events: list, phase: str, lay: Layout, layer: int, kinds: set | None = None) -> dict | None:
    """The first op-level event of ``phase`` inside ``layer``'s subtree (``layer`` -1: outside the
    model), preferring one that made the kind of value seen at module level (an intentional
    -Inf attention mask comes before the softmax that turns a fully masked row into NaN).
    In backward, the tracer's first event is exact even where the layers disagree."""
    inside, first_any = [], None
    for e in events or ():
        d = _event_dict(e)
        if d.get("phase") != phase:
            continue
        first_any = first_any or d
        idx = lay.index.get(d.get("layer", ""), -1) if d.get("in_model", True) else -1
        if (layer < 0 and idx < 0) or (layer >= 0 and idx >= 0 and lay.in_subtree(idx, layer)):
            inside.append(d)
    if kinds:
        for d in inside:
            if kinds & set(str(d.get("what", "")).split(",")):
                return d
    if inside:
        return inside[0]
    return first_any if phase == "backward" else None


def _op_hint(op: str) -> str:
    if not op:
        return ""
    base = op.split("::")[-1].split(".")[0].rstrip("_")
    return OP_HINTS.get(base, "")
