"""Histograms already sent stay cached: a recorded step's histogram never changes.

A push while training carries the last few histograms of the selected layer; without the
cache each push re-reads all of them through the watcher API, with it only the new step.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import convert


@dataclass(frozen=True)
class Hist:
    """One histogram as the protocol sends it (plain ints, float64 edges, int64 counts)."""

    step: int | None
    edges: np.ndarray
    counts: np.ndarray
    nan: int
    posinf: int
    neginf: int
    zero: int

    @classmethod
    def of(cls, h: Any, step: int) -> Hist:
        return cls(
            step=convert.integer(h.step if h.step is not None else step),
            edges=np.asarray(h.edges, dtype=np.float64),
            counts=np.asarray(h.counts, dtype=np.int64),
            nan=convert.count(h.nan),
            posinf=convert.count(h.posinf),
            neginf=convert.count(h.neginf),
            zero=convert.count(h.zero),
        )


class HistogramCache:
    """Histograms of one (watcher, layer, rank), keyed by (kind, step); anything else resets it.
    ``rank`` None is the source's own rank (another rank's, from a recording of a job, differ).

    Holds the watcher weakly, so a closed watcher's data is not kept alive by an open panel.
    """

    def __init__(self, max_entries: int = 96):
        self.max_entries = max_entries
        self._owner: tuple[weakref.ref, str, int | None] | None = None
        self._entries: dict[tuple[str, int], Hist] = {}

    def _owned_by(self, w: Any, layer: str, rank: int | None) -> bool:
        o = self._owner
        return o is not None and o[0]() is w and o[1] == layer and o[2] == rank

    def get(self, w: Any, layer: str, rank: int | None, of: str, step: int) -> Hist | None:
        if not self._owned_by(w, layer, rank):
            return None
        return self._entries.get((of, step))

    def put(self, w: Any, layer: str, rank: int | None, of: str, step: int, hist: Hist) -> None:
        if not self._owned_by(w, layer, rank):
            self._owner = (weakref.ref(w), layer, rank)
            self._entries = {}
        self._entries[(of, step)] = hist
        while len(self._entries) > self.max_entries:  # oldest inserted first
            self._entries.pop(next(iter(self._entries)))
