"""Bounded history: preallocated arrays that thin out old steps instead of growing.

When a store is full, every other row is dropped and only every 2nd (then 4th, ...)
later record is kept, so any run length fits the same memory and the whole run stays
covered at an even resolution. Rows are written in place: no per-step allocation.
"""

from __future__ import annotations

import numpy as np


class DecimatingStore:
    """Rows of fixed shape; ``append`` returns False when the row was thinned out."""

    def __init__(self, capacity: int, row_shape: tuple[int, ...], dtype=np.float32, fill=np.nan):
        self.capacity = max(2, int(capacity)) // 2 * 2
        self.data = np.full((self.capacity, *row_shape), fill, dtype=dtype)
        self.steps = np.full(self.capacity, -1, dtype=np.int64)
        self.n = 0
        self.stride = 1
        self._seen = 0

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.steps.nbytes

    def append(self, step: int, row) -> bool:
        keep = self._seen % self.stride == 0
        self._seen += 1
        if not keep:
            return False
        if self.n == self.capacity:
            half = self.capacity // 2
            self.data[:half] = self.data[0::2]
            self.steps[:half] = self.steps[0::2]
            self.n = half
            self.stride *= 2
        self.data[self.n] = row
        self.steps[self.n] = step
        self.n += 1
        return True

    def valid(self) -> tuple[np.ndarray, np.ndarray]:
        return self.steps[:self.n], self.data[:self.n]

    def row_of(self, step: int) -> int | None:
        hits = np.nonzero(self.steps[:self.n] == step)[0]
        return int(hits[-1]) if hits.size else None
