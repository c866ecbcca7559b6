"""Detectors: pure functions of step records that produce findings (issues 3 and 10).

Every detector implements :class:`Detector` — ``update(rec, metrics, ctx) -> findings`` —
and :class:`DetectorEngine` runs the list :data:`DETECTORS` over each record.
"""

from .detector import Context, Detector
from .engine import DETECTORS, FINDING_COLUMNS, DetectorEngine
from .finding import Finding
from .thresholds import Thresholds

__all__ = ["DETECTORS", "FINDING_COLUMNS", "Context", "Detector", "DetectorEngine", "Finding", "Thresholds"]
