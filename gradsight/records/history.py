"""Bounded history: arrays that grow on demand up to a cap, then thin out old steps.

A store starts small and doubles while the run is short, so a watcher of a small model
costs kilobytes, not its cap. When a store reaches its cap, every other row is dropped and
only every 2nd (then 4th, ...) later record is kept, so any run length fits the same memory
and the whole run stays covered at an even resolution. Rows are written in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INITIAL_ROWS = 16  # rows allocated before the first growth


class DecimatingStore:
    """Rows of fixed shape; ``append`` returns False when the row was thinned out."""

    def __init__(self, capacity: int, row_shape: tuple[int, ...], dtype=np.float32, fill=np.nan):
        self.capacity = max(2, int(capacity)) // 2 * 2
        self.fill = fill
        rows = min(self.capacity, INITIAL_ROWS)
        self.data = np.full((rows, *row_shape), fill, dtype=dtype)
        self.steps = np.full(rows, -1, dtype=np.int64)
        self.n = 0
        self.stride = 1
        self._seen = 0

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.steps.nbytes

    @property
    def max_nbytes(self) -> int:
        """Bytes at the cap: what this store holds at most, however long the run."""
        per_row = self.data.nbytes // len(self.steps) + self.steps.itemsize
        return self.capacity * per_row

    def _grow(self) -> None:
        rows = min(self.capacity, 2 * len(self.steps))
        data = np.full((rows, *self.data.shape[1:]), self.fill, dtype=self.data.dtype)
        data[:self.n] = self.data[:self.n]
        steps = np.full(rows, -1, dtype=np.int64)
        steps[:self.n] = self.steps[:self.n]
        self.data, self.steps = data, steps

    def append(self, step: int, row) -> bool:
        keep = self._seen % self.stride == 0
        self._seen += 1
        if not keep:
            return False
        if self.n == len(self.steps) and self.n < self.capacity:
            self._grow()
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

    def remap(self, axis: int, size: int, old: Sequence[int], new: Sequence[int]) -> None:
        """Re-index one axis of the rows (the layer axis after the model changed): entry
        ``old[k]`` moves to ``new[k]``; entries not moved start as the fill value."""
        shape = list(self.data.shape)
        shape[axis + 1] = size
        data = np.full(shape, self.fill, dtype=self.data.dtype)
        src = [slice(None)] * len(shape)
        dst = [slice(None)] * len(shape)
        src[axis + 1], dst[axis + 1] = list(old), list(new)
        if len(old):
            data[tuple(dst)] = self.data[tuple(src)]
        self.data = data

    def valid(self) -> tuple[np.ndarray, np.ndarray]:
        return self.steps[:self.n], self.data[:self.n]

    def row_of(self, step: int) -> int | None:
        hits = np.nonzero(self.steps[:self.n] == step)[0]
        return int(hits[-1]) if hits.size else None
