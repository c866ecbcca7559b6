"""Runs the detectors over each step record, keeps the findings, and decides which
new findings deserve a live warning.

Detectors are pure: numpy records in, reports to the :class:`~.finding.FindingLog`
out, with fixed-size state (no per-step growth). One detector failing never stops the
others; the first failure is re-raised after the step is logged, and the watcher
reports it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..records.metrics import layer_metrics
from ..records.step_record import StepRecord
from .clipping import Clipping
from .dead_units import DeadUnits
from .finding import FINDING_COLUMNS, Finding, FindingLog
from .gradient_scale import GradientScale
from .layout import Layout
from .nan_origin import KIND as NAN_KIND
from .nan_origin import NanOrigin, Origin
from .precision import SkippedSteps, Underflow
from .saturation import Saturation
from .thresholds import as_thresholds

__all__ = ["DetectorEngine", "FINDING_COLUMNS"]


@dataclass
class _Pending:
    """A gradient fault in a GradScaler run without ``optimizer=``: whether the step was
    skipped shows only at the next step, as a smaller loss scale."""

    step: int
    scale: float
    origin: Origin
    pgrad_bad: np.ndarray


class DetectorEngine:
    def __init__(self, *, layers, types=(), thresholds: Any = None):
        self.thresholds = as_thresholds(thresholds)
        self.layout = Layout(tuple(layers), tuple(types))
        self.log = FindingLog()
        th = self.thresholds
        self.nan = NanOrigin(self.layout)
        self.scale = GradientScale(self.layout, th)
        self.dead = DeadUnits(self.layout, th)
        self.saturation = Saturation(self.layout, th)
        self.underflow = Underflow(self.layout, th)
        self.skipped = SkippedSteps(self.layout, th)
        self.clipping = Clipping(self.layout, th)
        self._pending: _Pending | None = None

    @property
    def layers(self) -> tuple[str, ...]:
        return self.layout.layers

    def update(self, rec: StepRecord, metrics: dict | None = None) -> list[Finding]:
        """Process one record; return the findings to warn about now (new and serious)."""
        self.layout.bind_params(rec)
        m = metrics if metrics is not None else layer_metrics(rec)
        log = self.log
        log.begin(rec.step)
        errors: list[BaseException] = []

        def run(fn, *args):
            try:
                fn(*args)
            except Exception as exc:  # one detector's bug must not silence the others
                errors.append(exc)

        run(self._nan_and_skips, rec)
        run(self.scale.update, rec, m, log)
        run(self.dead.update, rec, log)
        run(self.saturation.update, rec, log)
        run(self.underflow.update, rec, log)
        run(self.clipping.update, rec, log)
        new = log.end()
        if errors:
            raise errors[0]
        return log.live_warnings(new)

    def _nan_and_skips(self, rec: StepRecord) -> None:
        log = self.log
        self._resolve_pending(rec)
        origin = self.nan.locate(rec)
        skipped = rec.optimizer_stepped is False
        reported = False
        if skipped:
            self.skipped.update(rec, True, origin, log)
        elif origin is not None and origin.backward and rec.optimizer_stepped is None and _scaler_in_use(rec):
            bad = rec.param_seen[:, 1] & ~np.isfinite(rec.param_grad_sumsq)
            self._pending = _Pending(rec.step, rec.grad_scale, origin, bad)  # decided at the next record
        else:
            if origin is not None:
                self._report_origin(origin)
                reported = True
            self.skipped.update(rec, False, None, log)
        self.nan.finish(rec, reported)

    def _resolve_pending(self, rec: StepRecord) -> None:
        p, self._pending = self._pending, None
        if p is None:
            return
        if np.isfinite(rec.grad_scale) and rec.grad_scale < p.scale:  # the scaler backed off: a skip
            self.skipped.update(rec, True, p.origin, self.log, at=p.step)
        else:  # a real fault: the optimizer stepped with those gradients
            self._report_origin(p.origin, at=p.step)
            self.nan.mark_updated(p.pgrad_bad)

    def _report_origin(self, o: Origin, at: int | None = None) -> None:
        self.log.report(NAN_KIND, self.layout.name(o.layer), "error", o.message, hint=o.hint, phase=o.phase,
                        op=o.op, source=o.source, value=o.value, at=at)

    def findings(self) -> list[Finding]:
        return list(self.log.episodes)

    def frame(self) -> pd.DataFrame:
        return self.log.frame()


def _scaler_in_use(rec: StepRecord) -> bool:
    return bool(np.isfinite(rec.grad_scale)) and rec.grad_scale != 1.0
