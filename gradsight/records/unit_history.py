"""Recent per-unit activity of ReLU-family layers: a fixed ring of the last steps.

Dead units are judged over a window of steps, and the dead-unit view draws it; a ring of
preallocated rows per layer keeps that window without growing.
"""

from __future__ import annotations

import numpy as np

WINDOW = 100  # steps kept per layer (the dead-unit detector's default window fits in it)


class UnitRing:
    """The last ``window`` per-unit max outputs of one layer."""

    def __init__(self, units: int, window: int = WINDOW):
        self.values = np.full((window, units), np.nan, dtype=np.float32)
        self.steps = np.full(window, -1, dtype=np.int64)
        self.pos = 0
        self.count = 0

    def add(self, step: int, per_unit: np.ndarray) -> None:
        self.values[self.pos] = per_unit
        self.steps[self.pos] = step
        self.pos = (self.pos + 1) % len(self.steps)
        self.count = min(self.count + 1, len(self.steps))

    def ordered(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values[steps x units]) oldest first."""
        idx = (np.arange(self.count) + self.pos - self.count) % len(self.steps)
        return self.steps[idx], self.values[idx]
