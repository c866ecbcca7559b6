"""The one interface every detector implements, as Cockpit's quantities share one.

A detector is built once with the model's :class:`~.layout.Layout` and the
:class:`~.thresholds.Thresholds`, and called once per record::

    findings = detector.update(rec, metrics, ctx)

``rec`` is the step record, ``metrics`` its derived per-layer metrics
(:func:`~gradsight.records.metrics.layer_metrics`), and ``ctx`` what earlier detectors
established about the same record (the NaN/Inf origin, a skipped step, divergence) plus
``ctx.hold(kind)`` for a signal that this record could not measure. It returns the
findings whose condition holds in this record; the engine merges them into episodes.
State is fixed-size (nothing grows with the number of steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..records.step_record import StepRecord
from .finding import Finding
from .layout import Layout
from .thresholds import Thresholds

if TYPE_CHECKING:
    from .nan_origin import Origin


@dataclass
class Context:
    """Per-record facts shared between detectors (filled in the order of the engine's list)."""

    step: int
    held: set[str] = field(default_factory=set)
    origin: Origin | None = None   # where this step's first NaN/Inf appeared (NonFinite)
    skipped: bool = False          # the optimizer did not step (GradScaler skip)
    nonfinite: bool = False        # a gradient in this record is NaN/Inf: scale statistics say nothing
    diverging: Finding | None = None  # this record's divergence warning, if any (GradientScale)

    def hold(self, kind: str) -> None:
        """``kind`` could not be measured in this record: its open episodes stay open."""
        self.held.add(kind)


class Detector(Protocol):
    kinds: tuple[str, ...]

    def __init__(self, layout: Layout, th: Thresholds) -> None: ...

    def update(self, rec: StepRecord, metrics: dict[str, np.ndarray], ctx: Context) -> list[Finding]: ...
