"""nan_origin and skipped_step: the detector that runs first and tells the others whether
this record's numbers can be trusted (``ctx.nonfinite``, ``ctx.skipped``, ``ctx.origin``).

One origin per step (:class:`~.nan_origin.NanOrigin` finds it). A GradScaler run
without ``optimizer=`` shows whether a gradient fault skipped the step only at the next
record, as a smaller loss scale: the decision waits one record and is back-dated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..records.step_record import StepRecord
from .detector import Context
from .finding import Finding
from .layout import Layout, nonfinite_counts
from .nan_origin import KIND as NAN_KIND
from .nan_origin import NanOrigin, Origin
from .precision import SkippedSteps
from .thresholds import Thresholds


@dataclass
class _Pending:
    """A gradient fault in a GradScaler run without ``optimizer=``: whether the step was
    skipped shows only at the next step, as a smaller loss scale."""

    step: int
    scale: float
    origin: Origin
    pgrad_bad: np.ndarray


class NonFinite:
    kinds = (NAN_KIND, SkippedSteps.KIND)

    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.nan = NanOrigin(layout)
        self.skipped = SkippedSteps(layout, th)
        self._pending: _Pending | None = None

    def update(self, rec: StepRecord, metrics: dict, ctx: Context) -> list[Finding]:
        out: list[Finding] = []
        self._resolve_pending(rec, out)
        pgrad_bad = rec.param_seen[:, 1] & ~np.isfinite(rec.param_grad_sumsq)
        # gradients only: a forward that makes -Inf on purpose (an attention mask) leaves them finite
        ctx.nonfinite = bool(nonfinite_counts(rec.grad).any() or pgrad_bad.any())
        origin = self.nan.locate(rec)
        skipped = rec.optimizer_stepped is False
        ctx.skipped, ctx.origin = skipped, origin
        reported = False
        if skipped:
            _append(out, self.skipped.observe(rec, True, origin))
        elif origin is not None and origin.backward and rec.optimizer_stepped is None and _scaler_in_use(rec):
            self._pending = _Pending(rec.step, rec.grad_scale, origin, pgrad_bad)  # decided at the next record
        else:
            if origin is not None:
                out.append(self._origin(origin, rec.step))
                reported = True
            self.skipped.observe(rec, False, None)
        self.nan.finish(rec, reported)
        return out

    def peer(self, rec: StepRecord, ranks: tuple[int, ...]) -> list[Finding]:
        """Other ranks went non-finite at ``rec``'s step, this one did not (see NanOrigin.peer)."""
        origin = self.nan.peer(rec, ranks)
        return [self._origin(origin, rec.step)] if origin is not None else []

    def _resolve_pending(self, rec: StepRecord, out: list[Finding]) -> None:
        p, self._pending = self._pending, None
        if p is None:
            return
        if np.isfinite(rec.grad_scale) and rec.grad_scale < p.scale:  # the scaler backed off: a skip
            _append(out, self.skipped.observe(rec, True, p.origin, at=p.step))
        else:  # a real fault: the optimizer stepped with those gradients
            out.append(self._origin(p.origin, p.step))
            self.nan.mark_updated(p.pgrad_bad)

    def _origin(self, o: Origin, step: int) -> Finding:
        return Finding(step=step, layer=self.layout.name(o.layer), kind=NAN_KIND, severity="error",
                       message=o.message, hint=o.hint, phase=o.phase, op=o.op, source=o.source, value=o.value)


def _append(out: list[Finding], f: Finding | None) -> None:
    if f is not None:
        out.append(f)


def _scaler_in_use(rec: StepRecord) -> bool:
    return bool(np.isfinite(rec.grad_scale)) and rec.grad_scale != 1.0
