"""Persistence: how long a per-layer condition has held, without per-step allocation.

Some signals are measured every step (gradient norms), others only on detail steps
(saturation, every ``histogram_every``-th step). ``Streak`` counts measurements in a row
where a condition held and remembers the step it began; an unmeasured layer (NaN) keeps
its streak. A condition is confirmed after ``window`` measurements, or after at least
two that span ``window`` steps — so a sparse signal is not made to wait 5 x 10 steps.
"""

from __future__ import annotations

import numpy as np


class Streak:
    def __init__(self, n: int):
        self.count = np.zeros(n, dtype=np.int64)
        self.start = np.full(n, -1, dtype=np.int64)

    def update(self, step: int, holds: np.ndarray, measured: np.ndarray) -> None:
        """``holds``/``measured``: bool arrays over layers for this record."""
        on = holds & measured
        off = ~holds & measured
        fresh = on & (self.count == 0)
        self.start[fresh] = step
        self.count[on] += 1
        self.count[off] = 0
        self.start[off] = -1

    def confirmed(self, step: int, window: int) -> np.ndarray:
        span = step - self.start + 1
        return (self.count >= window) | ((self.count >= min(2, window)) & (span >= window))

    def reset(self) -> None:
        self.count[:] = 0
        self.start[:] = -1
