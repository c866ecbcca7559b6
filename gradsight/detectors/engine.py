"""Runs the detectors over each step record, keeps the findings, and decides which
new findings deserve a live warning.

Every detector has one interface (:mod:`.detector`): ``update(rec, metrics, ctx)``
returns the findings that hold in this record. The engine calls them in order — the
non-finite check first, because whether a record's numbers can be trusted decides what
the others may conclude from it — and merges what they return into episodes. One
detector failing never stops the others; the first failure is re-raised after the step
is logged, and the watcher reports it once.

When the run diverges, the divergence warning comes first and the per-layer scale
findings that began with it are folded into it (their layers join its ``affected``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..records.metrics import layer_metrics
from ..records.step_record import StepRecord
from .clipping import Clipping
from .dead_units import DeadUnits
from .detector import Context, Detector
from .finding import FINDING_COLUMNS, Finding, FindingLog
from .gradient_scale import EXPLODE, VANISH, GradientScale
from .layout import Layout
from .loss import LossWatch
from .nonfinite import NonFinite
from .precision import Underflow
from .saturation import Saturation
from .thresholds import as_thresholds

__all__ = ["DETECTORS", "DetectorEngine", "FINDING_COLUMNS"]

DETECTORS: tuple[type[Detector], ...] = (NonFinite, LossWatch, GradientScale, DeadUnits, Saturation, Underflow,
                                         Clipping)


class DetectorEngine:
    def __init__(self, *, layers, types=(), thresholds: Any = None):
        self.thresholds = as_thresholds(thresholds)
        self.layout = Layout(tuple(layers), tuple(types))
        self.log = FindingLog()
        self.detectors: list[Detector] = [cls(self.layout, self.thresholds) for cls in DETECTORS]

    @property
    def layers(self) -> tuple[str, ...]:
        return self.layout.layers

    def update(self, rec: StepRecord, metrics: dict | None = None) -> list[Finding]:
        """Process one record; return the findings to warn about now (new and serious)."""
        self.layout.bind_params(rec)
        m = metrics if metrics is not None else layer_metrics(rec)
        log = self.log
        log.begin(rec.step)
        ctx = Context(step=rec.step)
        errors: list[BaseException] = []
        found: list[Finding] = []
        for d in self.detectors:
            try:
                found += d.update(rec, m, ctx)
            except Exception as exc:  # one detector's bug must not silence the others
                errors.append(exc)
        if ctx.diverging is not None:
            found = self._fold_into_divergence(found, ctx.diverging)
        for kind in ctx.held:
            log.hold(kind)
        for f in found:
            log.add(f)
        new = log.end()
        if errors:
            raise errors[0]
        return log.live_warnings(new)

    def _fold_into_divergence(self, found: list[Finding], div: Finding) -> list[Finding]:
        """Scale findings that began with the divergence follow from it: one row, its."""
        scale = (VANISH, EXPLODE)
        folded = [f for f in found if f.kind in scale and f is not div and f.step >= div.step - 1]
        folded += self.log.fold(lambda e: e.kind in scale and e.key != div.key and e.step >= div.step - 1)
        layers = [name for f in folded for name in f.affected]
        if layers:
            div.affected = tuple(dict.fromkeys(layers))
            div.message += f" {len(div.affected)} layer(s) with exploding or vanishing gradients follow from it."
        return [f for f in found if not any(f is g for g in folded)]

    def findings(self) -> list[Finding]:
        return list(self.log.episodes)

    def frame(self, all: bool = False) -> pd.DataFrame:  # noqa: A002 - mirrors w.findings(all=True)
        return self.log.frame(all=all)
