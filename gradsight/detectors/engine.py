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
from .gradient_scale import DIVERGENCE_KEY, EXPLODE, VANISH, GradientScale
from .layout import Layout
from .loss import LossWatch
from .nonfinite import NonFinite
from .precision import Underflow
from .saturation import Saturation
from .stale_grad import StaleGrad
from .thresholds import as_thresholds

__all__ = ["DETECTORS", "DetectorEngine", "FINDING_COLUMNS"]

DETECTORS: tuple[type[Detector], ...] = (NonFinite, LossWatch, GradientScale, DeadUnits, Saturation, Underflow,
                                         Clipping, StaleGrad)


class DetectorEngine:
    def __init__(self, *, layers, types=(), thresholds: Any = None):
        self.thresholds = as_thresholds(thresholds)
        self.layout = Layout(tuple(layers), tuple(types))
        self.log = FindingLog()
        self.detectors: list[Detector] = [cls(self.layout, self.thresholds) for cls in DETECTORS]
        self._divergences: list[Finding] = []  # the latest divergence episodes (bounded)

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
        for kind in ctx.held:
            log.hold(kind)
        if ctx.diverging is not None:
            ep = log.add(ctx.diverging)
            if not self._divergences or self._divergences[-1] is not ep:
                self._divergences = [*self._divergences[-15:], ep]
        for f in self._fold_into_divergence(found, ctx.diverging):
            log.add(f)
        new = log.end()
        if errors:
            raise errors[0]
        return log.live_warnings(new)

    def _fold_into_divergence(self, found: list[Finding], fresh: Finding | None) -> list[Finding]:
        """Scale findings that began with a divergence follow from it: their layers join its
        ``affected`` and they get no row of their own — while their streak lasts, since
        its start stays back-dated to where it began. Returns the findings to log."""
        if not self._divergences:
            return found
        windows = self._divergences

        def window(f: Finding) -> Finding | None:
            if f.kind not in (VANISH, EXPLODE) or f.key == DIVERGENCE_KEY:
                return None
            return next((d for d in reversed(windows) if d.step <= f.step <= d.last_step + 1), None)

        out = []
        for f in [*found, *self.log.fold(lambda e: window(e) is not None)]:
            if f is fresh:
                continue
            d = window(f)
            if d is None:
                out.append(f)
                continue
            d.affected = tuple(dict.fromkeys((*d.affected, *f.affected)))
        for d in windows:
            if d.affected:
                base = d.message.split(" Exploding or vanishing gradients in")[0]
                d.message = f"{base} Exploding or vanishing gradients in {len(d.affected)} layer(s) follow from it."
        return out

    def distributed(self, reduced: bool, peers_known: bool) -> None:
        """In a multi-process job: gradients are averaged across ranks after capture (DDP, FSDP), and
        the cross-rank exchange tells which ranks went non-finite (see NanOrigin)."""
        nan = self._nonfinite().nan
        nan.reduced, nan.peers_known = reduced, peers_known

    def peer_nonfinite(self, rec: StepRecord, ranks: tuple[int, ...]) -> list[Finding]:
        """After ``update(rec)``: the cross-rank exchange says ``ranks`` produced a NaN/Inf at this
        step while this rank stayed finite. Returns the findings to warn about."""
        return self.log.live_warnings(self.log.late(self._nonfinite().peer(rec, ranks), ()))

    def _nonfinite(self) -> NonFinite:
        return next(d for d in self.detectors if isinstance(d, NonFinite))

    def loss_arrived(self, rec: StepRecord) -> list[Finding]:
        """``rec``'s loss arrived after ``update(rec)`` (``w.step(loss)`` after an ``optimizer=``
        step): judge it now; return the findings to warn about."""
        lw = next(d for d in self.detectors if isinstance(d, LossWatch))
        return self.log.live_warnings(self.log.late(lw.late(rec), LossWatch.kinds))

    def findings(self) -> list[Finding]:
        return list(self.log.episodes)

    def frame(self, all: bool = False) -> pd.DataFrame:  # noqa: A002 - mirrors w.findings(all=True)
        return self.log.frame(all=all)
