"""Runs the detectors over each step record and keeps the findings (placeholder engine)."""

from __future__ import annotations

import pandas as pd

FINDING_COLUMNS = ["step", "last_step", "count", "layer", "kind", "severity", "message", "hint",
                   "phase", "op", "source", "value", "threshold"]


class DetectorEngine:
    def __init__(self, *, layers, types, thresholds=None):
        self.layers = layers
        self.types = types
        self.thresholds = thresholds

    def update(self, record) -> list:
        return []

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(columns=FINDING_COLUMNS)
