"""Detectors: pure functions of step records that produce findings (issue 3)."""

from .engine import FINDING_COLUMNS, DetectorEngine
from .finding import Finding
from .thresholds import Thresholds

__all__ = ["FINDING_COLUMNS", "DetectorEngine", "Finding", "Thresholds"]
