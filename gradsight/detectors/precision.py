"""Low-precision training: ``underflow`` (fp16/bf16 gradients flushed to zero or
subnormal) and ``skipped_step`` (a GradScaler step skipped because of Inf/NaN).

Underflow is judged on the raw gradient values, as stored (scaled by a GradScaler if
one is used): the values a layer's backward actually had to work with. It needs the
minimum/maximum and histograms, which capture takes on detail steps.

A skipped step is normal while a GradScaler calibrates its scale, so it is ``info``
and never a ``nan_origin`` error; ``skip_run`` skips in a row escalate it to a warning,
and the message says where the first non-finite value appeared — a forward overflow
is one no loss scale can fix.
"""

from __future__ import annotations

import numpy as np

from ..records.fields import F
from ..records.step_record import StepRecord
from .detector import Context
from .finding import Finding
from .layout import Layout, fmt
from .nan_origin import Origin
from .thresholds import Thresholds

TINY = {"float16": float(np.finfo(np.float16).tiny), "bfloat16": 2.0 ** -126}
SMALLEST = {"float16": 2.0 ** -24, "bfloat16": 2.0 ** -133}  # smallest subnormal: below it, zero
UNDERFLOW_HINT = ("Scale the loss up so that gradients live in the normal range: torch.amp.GradScaler for "
                  "float16 (and pass scaler= to gs.watch), or keep this layer in float32 (disable autocast "
                  "around it). A loss multiplied by a tiny constant, or vanishing gradients, also do this.")
SKIP_HINT = ("Expected a few times while GradScaler calibrates; if it keeps happening, the gradients overflow "
             "even at a small scale: find the layer in the message, check for a diverging run (lower the "
             "learning rate) or an op that overflows float16 (run it in float32).")


class Underflow:
    """One row per record: the layers whose low-precision gradients flushed, named by the
    first of them in the backward pass (where the underflow begins; pass-through layers
    such as activations, dropout and containers only carry it on and are left out).

    A total flush — every gradient exactly zero after a low-precision backward — is the
    loudest underflow there is and is read from the every-step norms; partial underflow
    needs the histograms of detail steps."""

    KIND = "underflow"
    kinds = (KIND,)

    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.th = th

    def update(self, rec: StepRecord, metrics: dict, ctx: Context) -> list[Finding]:
        lay = self.layout
        half = [(i, d) for i, d in rec.grad_dtypes.items() if d in TINY and not lay.pass_through[i]]
        if not half or ctx.nonfinite:
            return []
        flush = self._total_flush(rec, half)
        if flush is not None:
            return [flush]
        if not rec.detail:
            ctx.hold(self.KIND)
            return []
        th = self.th
        hits: list[tuple[int, str, float, float, float]] = []
        for i, dtype in half:
            row, numel = rec.grad[i], rec.grad_numel[i]
            lo, hi, nonzero = row[F["min"]], row[F["max"]], row[F["nonzero"]]
            if not (numel > 0 and np.isfinite([lo, hi, nonzero]).all()):
                continue
            tiny = TINY[dtype]
            amax = max(abs(lo), abs(hi))
            zeros = numel - nonzero
            below, nonzero_h = self._below(rec, i, tiny)
            frac_sub = below / nonzero_h if nonzero_h > 0 else 0.0
            whole = 0 < amax < tiny * 2.0 ** th.underflow_octaves
            if whole or frac_sub >= th.underflow_fraction:
                hits.append((i, dtype, (zeros + below) / numel, amax, tiny))
        if not hits:
            return []
        order = self._backward_first([h[0] for h in hits], rec)
        by_layer = {h[0]: h for h in hits}
        i, dtype, lost, amax, tiny = by_layer[order[0]]
        more = f"; the same in {len(order) - 1} layer(s) before it" if len(order) > 1 else ""
        msg = (f"{lost:.0%} of the {dtype} gradient values at the output of {lay.describe(i)} are zero or "
               f"subnormal (largest magnitude {fmt(amax)}; the smallest normal {dtype} is {fmt(tiny)}), so "
               f"they carry no or few significant bits{more}.")
        return [Finding(step=rec.step, layer=lay.name(i), kind=self.KIND, severity="warning", message=msg,
                        hint=UNDERFLOW_HINT, phase="backward", value=float(lost),
                        threshold=th.underflow_fraction, affected=tuple(lay.name(j) for j in order), key="")]

    def _total_flush(self, rec: StepRecord, half: list[tuple[int, str]]) -> Finding | None:
        lay = self.layout
        sq = np.array([rec.grad[i, F["sumsq"]] for i, _ in half])
        if not (len(sq) and np.isfinite(sq).all() and (sq == 0).all()):
            return None
        pseen = rec.param_seen[:, 1]
        if pseen.any() and not (rec.param_grad_sumsq[pseen] == 0).all():
            return None
        if np.isfinite(rec.loss) and rec.loss == 0:
            return None  # a zero loss has zero gradients in any precision
        order = self._backward_first([i for i, _ in half], rec)
        dtype = rec.grad_dtypes[order[0]]
        loss = f"the loss ({fmt(rec.loss)}) is finite and non-zero, yet " if np.isfinite(rec.loss) else ""
        msg = (f"Every gradient is exactly zero after a {dtype} backward: {loss}the gradient at the output of "
               f"{lay.describe(order[0])} and in all {len(order)} layers before it flushed to zero (the smallest "
               f"{dtype} value is {fmt(SMALLEST[dtype])}). "
               "The optimizer steps with nothing.")
        return Finding(step=rec.step, layer=lay.name(order[0]), kind=self.KIND, severity="warning", message=msg,
                       hint=UNDERFLOW_HINT, phase="backward", value=1.0, threshold=self.th.underflow_fraction,
                       affected=tuple(lay.name(j) for j in order), key="")

    @staticmethod
    def _backward_first(layers: list[int], rec: StepRecord) -> list[int]:
        pos = {layer: k for k, layer in enumerate(rec.backward_order)}
        return sorted(layers, key=lambda j: (pos.get(j, len(pos) + j), j))

    @staticmethod
    def _below(rec: StepRecord, i: int, tiny: float) -> tuple[float, float]:
        """(values below the smallest normal, non-zero finite values) from the histogram."""
        h = rec.hist.get((i, "grad"))
        if h is None:
            return 0.0, 0.0
        edges = np.asarray(h.edges, dtype=np.float64)
        counts = np.asarray(h.counts, dtype=np.float64)
        outer = np.maximum(np.abs(edges[:-1]), np.abs(edges[1:]))
        below = float(counts[outer <= tiny].sum()) + h.subnormal
        return below, float(counts.sum()) + h.subnormal


class SkippedSteps:
    """Part of :class:`~.nonfinite.NonFinite`, which decides whether a step was skipped."""

    KIND = "skipped_step"

    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.th = th
        self.run = 0

    def observe(self, rec: StepRecord, skipped: bool, origin: Origin | None, at: int | None = None) -> Finding | None:
        if not skipped:
            self.run = 0
            return None
        self.run += 1
        th, lay = self.th, self.layout
        where = ""
        if origin is not None:
            name = lay.describe(origin.layer) if origin.layer >= 0 else "the loss"
            if origin.phase == "forward":
                where = (f"; the forward already produced NaN/Inf at {name}, which no loss scale can fix")
            elif origin.phase == "backward":
                where = f"; the first non-finite gradient appeared in the backward of {name}"
        scale = f", loss scale {fmt(rec.grad_scale)}" if rec.grad_scale != 1.0 and np.isfinite(rec.grad_scale) else ""
        severity = "warning" if self.run >= th.skip_run else "info"
        why = "because gradients held Inf/NaN" if origin is not None else \
            "(gradients were zeroed without optimizer.step(); a GradScaler does this when it finds Inf/NaN)"
        msg = f"The optimizer step was skipped {why} ({self.run} in a row{scale}){where}."
        step = rec.step if at is None else at
        return Finding(step=step, layer="", kind=self.KIND, severity=severity, message=msg, hint=SKIP_HINT,
                       phase=origin.phase if origin else "", op=origin.op if origin else "",
                       source=origin.source if origin else "", value=float(self.run),
                       threshold=float(th.skip_run))
