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
from .finding import FindingLog
from .layout import Layout, fmt
from .nan_origin import Origin
from .thresholds import Thresholds

TINY = {"float16": float(np.finfo(np.float16).tiny), "bfloat16": 2.0 ** -126}
UNDERFLOW_HINT = ("Scale the loss up so that gradients live in the normal range: torch.amp.GradScaler for "
                  "float16 (and pass scaler= to gs.watch), or keep this layer in float32 (disable autocast "
                  "around it). A loss multiplied by a tiny constant, or vanishing gradients, also do this.")
SKIP_HINT = ("Expected a few times while GradScaler calibrates; if it keeps happening, the gradients overflow "
             "even at a small scale: find the layer in the message, check for a diverging run (lower the "
             "learning rate) or an op that overflows float16 (run it in float32).")


class Underflow:
    KIND = "underflow"

    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.th = th

    def update(self, rec: StepRecord, log: FindingLog) -> None:
        half = [(i, d) for i, d in rec.grad_dtypes.items() if d in TINY]
        if not half:
            return
        if not rec.detail:
            log.hold(self.KIND)
            return
        th, lay = self.th, self.layout
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
            if not (whole or frac_sub >= th.underflow_fraction):
                continue
            lost = (zeros + below) / numel
            msg = (f"{lost:.0%} of the {dtype} gradient values at the output of {lay.describe(i)} are zero or "
                   f"subnormal (largest magnitude {fmt(amax)}; the smallest normal {dtype} is {fmt(tiny)}), so "
                   "they carry no or few significant bits.")
            log.report(self.KIND, lay.name(i), "warning", msg, hint=UNDERFLOW_HINT, phase="backward",
                       value=float(lost), threshold=th.underflow_fraction)

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
    KIND = "skipped_step"

    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.th = th
        self.run = 0

    def update(self, rec: StepRecord, skipped: bool, origin: Origin | None, log: FindingLog,
               at: int | None = None) -> None:
        if not skipped:
            self.run = 0
            return
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
        log.report(self.KIND, "", severity, msg, hint=SKIP_HINT, phase=origin.phase if origin else "",
                   op=origin.op if origin else "", source=origin.source if origin else "",
                   value=float(self.run), threshold=float(th.skip_run), at=at)
