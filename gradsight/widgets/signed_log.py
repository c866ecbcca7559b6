"""A signed-log value axis for histograms whose values span many decades.

gradsight's histograms (:class:`~gradsight.Histogram`) have negative magnitudes on a log
grid, then 0, then positive magnitudes. This module maps them onto one display axis:
``-Inf | negative decades (large → small) | 0 | positive decades (small → large) | +Inf | NaN``,
with exact zeros and the non-finite counts in columns of their own. Histograms of
different steps get one common grid so they can be stacked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SPECIALS = ("-Inf", "+Inf", "NaN")


def side_edges(h) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log10 magnitude edges, negative counts, positive counts), magnitudes increasing."""
    counts = np.asarray(h.counts, dtype=np.float64)
    half = len(counts) // 2
    pos = np.asarray(h.edges, dtype=np.float64)[half + 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.log10(pos)
    if g.size >= 2 and np.isfinite(g).all():
        d = g[1] - g[0]
        log_edges = np.concatenate([[g[0] - d], g])
    elif g.size == 1 and np.isfinite(g[0]):
        log_edges = np.array([g[0] - 1.0, g[0]])
    else:
        log_edges = np.linspace(-1.0, 0.0, half + 1)
    return log_edges, counts[:half][::-1], counts[half:]


@dataclass
class Axis:
    """The common display axis: magnitudes from 10**lo to 10**hi on both sides."""

    lo: float
    hi: float
    cells: int = 40  # per side

    @property
    def zero_half(self) -> float:
        return max(0.35, 0.05 * (self.hi - self.lo))

    def u(self, log_mag: np.ndarray | float, sign: int) -> np.ndarray:
        return sign * (np.asarray(log_mag, dtype=np.float64) - self.lo + self.zero_half)

    @property
    def span(self) -> float:
        return self.hi - self.lo + self.zero_half

    def special_position(self, name: str) -> tuple[float, float]:
        """(left, right) of the column of -Inf, +Inf or NaN."""
        w = 2 * self.zero_half
        gap = 2.0 * self.zero_half
        if name == "-Inf":
            return -self.span - gap - w, -self.span - gap
        if name == "+Inf":
            return self.span + gap, self.span + gap + w
        return self.span + 2 * gap + w, self.span + 2 * gap + 2 * w

    def grid(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.cells + 1)

    def cell_edges(self) -> np.ndarray:
        """Display edges of all value cells: negative side, zero, positive side."""
        g = self.grid()
        neg = self.u(g[::-1], -1)
        pos = self.u(g, +1)
        return np.concatenate([neg, pos])  # neg[-1] .. pos[0] is the zero cell

    def ticks(self, per_side: int = 4) -> tuple[list[float], list[str]]:
        """Decade ticks on both sides (at most ``per_side``), 0, and the special columns."""
        first, last = int(np.ceil(self.lo)), int(np.floor(self.hi))
        margin = 0.06 * (self.hi - self.lo)  # keep decade labels clear of the -Inf/+Inf labels
        decades = [d for d in range(first, last + 1) if self.lo + margin <= d <= self.hi - margin] or \
            [int(round((self.lo + self.hi) / 2))]
        step = max(1, int(np.ceil(len(decades) / max(1, per_side))))
        decades = decades[::-1][::step][::-1]
        pos, lab = [], []
        for d in reversed(decades):
            pos.append(float(self.u(d, -1)))
            lab.append(f"−1e{d}")
        pos.append(0.0)
        lab.append("0")
        for d in decades:
            pos.append(float(self.u(d, +1)))
            lab.append(f"1e{d}")
        for s in SPECIALS:
            a, b = self.special_position(s)
            pos.append((a + b) / 2)
            lab.append(s)
        return pos, lab

    def limits(self) -> tuple[float, float]:
        return self.special_position("-Inf")[0] - 0.2, self.special_position("NaN")[1] + 0.2


def per_side(ax) -> int:
    """How many decade labels fit on each side of an axes of this width."""
    width_in = ax.get_position().width * ax.figure.get_figwidth()
    return max(1, min(4, int(width_in / 1.6)))


def common_axis(hists: Sequence, cells: int = 40) -> Axis:
    """One axis covering the occupied magnitude range of every histogram."""
    lo, hi = np.inf, -np.inf
    for h in hists:
        e, neg, pos = side_edges(h)
        occupied = (neg > 0) | (pos > 0)
        if occupied.any():
            k = np.nonzero(occupied)[0]
            lo = min(lo, e[k[0]])
            hi = max(hi, e[k[-1] + 1])
    if not np.isfinite(lo):
        lo, hi = -1.0, 0.0
    if hi - lo < 1.0:
        mid = (hi + lo) / 2
        lo, hi = mid - 0.5, mid + 0.5
    return Axis(lo=float(lo), hi=float(hi), cells=cells)


def regrid(h, axis: Axis) -> np.ndarray:
    """Counts of ``h`` on the common axis: [negative cells (large→small), zero, positive cells].

    Counts are spread uniformly in log-magnitude within each original bin.
    """
    e, neg, pos = side_edges(h)
    g = axis.grid()

    def one(counts: np.ndarray) -> np.ndarray:
        cum = np.concatenate([[0.0], np.cumsum(counts)])
        return np.diff(np.interp(g, e, cum, left=0.0, right=cum[-1]))

    return np.concatenate([one(neg)[::-1], [float(h.zero)], one(pos)])


def specials(h) -> dict[str, int]:
    return {"-Inf": int(h.neginf), "+Inf": int(h.posinf), "NaN": int(h.nan)}
