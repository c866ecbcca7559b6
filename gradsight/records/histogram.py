"""Histograms that span any number of decades, with non-finite values counted apart.

The record type (:class:`Histogram`) and its host side: the device counts 2048 quarter-octave
bins (:func:`gradsight.kernel_hooks.histogram.octave_counts`); :func:`rebin` regroups the
occupied ones into the user's fixed number of bins — half for negative values, half for
positive — on a log-magnitude grid fitted to the occupied range, so gradients of 1e-12 and
1e+4 in one model both get resolution. Pure numpy: a recording re-reads these without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HIST_KINDS = ("activation", "grad", "weight")
"""What a histogram can be of, in the one order every store and view uses."""

EXTRA_COUNTS = ("zero", "nan", "posinf", "neginf", "subnormal", "sampled")
"""The counts kept apart from the bins, in the order the history stores them (``sampled``:
how many values the bins were estimated from a strided sample of; 0 when all were counted)."""

FINE_BINS = 2048  # sign(1) + exponent(8) + 2 mantissa bits
FINE_SLOTS = FINE_BINS + 2  # + the sample's zeros (scaled) + values represented by sampling
SAMPLE = 1 << 14
"""Largest number of values a histogram's bins are counted from, per tensor: above it, a
deterministic strided sample (see :mod:`gradsight.kernel_hooks.histogram`)."""
SHIFT = 21
_EXP_ZERO = 0
_EXP_SPECIAL = 255


# Host-side decoding of the fine bins --------------------------------------------------

def _fine_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    codes = (np.arange(FINE_BINS, dtype=np.int64) - FINE_BINS // 2).astype(np.int32)
    bits = (codes.astype(np.int64) << SHIFT).astype(np.int64) & 0xFFFFFFFF
    negative = (bits >> 31) == 1
    exponent = (bits >> 23) & 0xFF
    mant_top = (bits >> 21) & 0x3
    # lower edge of the magnitude of each normal bin: 2^(e-127) * (1 + m/4)
    lower = np.ldexp(1.0 + mant_top / 4.0, (exponent - 127).astype(np.int64))
    return negative, exponent, mant_top, lower


_NEG, _EXP, _MANT, _LOWER = _fine_tables()
_LOG_LOWER = np.log10(_LOWER)
_LOG_UPPER = np.log10(np.ldexp(1.0 + (_MANT + 1) / 4.0, (_EXP - 127).astype(np.int64)))
_SPECIAL = _EXP == _EXP_SPECIAL
_IS_INF = _SPECIAL & (_MANT == 0)
_IS_NAN = _SPECIAL & ~_IS_INF
_POSINF = _IS_INF & ~_NEG
_NEGINF = _IS_INF & _NEG
_TINY = _EXP == _EXP_ZERO
_NORMAL = ~_TINY & ~_SPECIAL
_CENTRES = (_LOG_LOWER + _LOG_UPPER) / 2
# index forms of the masks (a gather of a few bins is cheaper than a 2048-wide boolean mask)
_NAN_IDX, _POSINF_IDX, _NEGINF_IDX = np.flatnonzero(_IS_NAN), np.flatnonzero(_POSINF), np.flatnonzero(_NEGINF)
_TINY_IDX = np.flatnonzero(_TINY)
_NOT_NORMAL_IDX = np.flatnonzero(~_NORMAL)

@dataclass(frozen=True)
class Histogram:
    """One histogram of a layer's gradient, activation or weight at one step.

    ``edges`` has ``len(counts) + 1`` monotonic values: negative magnitudes on a log
    grid, then 0, then positive magnitudes on the same grid. Zeros, NaN, +Inf and -Inf
    are not in ``counts``; they are the separate fields.
    """

    layer: str
    of: str
    step: int
    edges: np.ndarray
    counts: np.ndarray
    zero: int
    nan: int
    posinf: int
    neginf: int
    subnormal: int = 0
    sampled: int = 0

    @property
    def total(self) -> int:
        return int(self.counts.sum()) + self.zero + self.nan + self.posinf + self.neginf

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"left": self.edges[:-1], "right": self.edges[1:], "count": self.counts})

    def __repr__(self) -> str:
        return (
            f"Histogram(layer={self.layer!r}, of={self.of!r}, step={self.step}, bins={len(self.counts)}, "
            f"finite={int(self.counts.sum())}, zero={self.zero}, nan={self.nan}, "
            f"+inf={self.posinf}, -inf={self.neginf}" + (f", sampled from {self.sampled:,} values)"
                                                          if self.sampled else ")")
        )


def rebin(fine: np.ndarray, bins: int, *, layer: str = "", of: str = "", step: int = -1,
          exact_zero: int | None = None, exact_nonfinite: tuple[int, int, int] | None = None,
          exact_total: int | None = None, exact_max_abs: float | None = None) -> Histogram:
    """Turn 2048 fine counts (optionally followed by the two sampling slots of
    :data:`FINE_SLOTS`) into a :class:`Histogram` with ``bins`` bins.

    ``exact_zero`` and ``exact_nonfinite`` (NaN, +Inf, -Inf), from the full summary
    statistics, replace what the bins say: they separate true zeros from subnormals (which
    share exponent 0 in the fine bins) and stay exact when the bins were sampled; with
    ``exact_total`` (the number of values) sampled bins are scaled to sum to the exact
    number of finite non-zero values, so the histogram's total is the tensor's size; and
    ``exact_max_abs`` (from the exact min/max) extends the grid to the largest magnitude, which
    a sample can miss.
    """
    fine = np.asarray(fine, dtype=np.int64)
    sample_zero, sampled = (int(fine[FINE_BINS]), int(fine[FINE_BINS + 1])) if fine.size >= FINE_SLOTS else (0, 0)
    fine = fine[:FINE_BINS]
    if exact_nonfinite is not None:
        nan, posinf, neginf = (int(c) for c in exact_nonfinite)
    else:
        nan, posinf, neginf = int(fine[_NAN_IDX].sum()), int(fine[_POSINF_IDX].sum()), int(fine[_NEGINF_IDX].sum())
    tiny = int(fine[_TINY_IDX].sum())  # zeros and float32 subnormals
    if sampled:  # the sample's own zeros tell zeros from subnormals; the exact count is the tensor's
        subnormal = max(tiny - sample_zero, 0)
        zero = sample_zero if exact_zero is None else int(exact_zero)
    else:
        zero = tiny if exact_zero is None else min(int(exact_zero), tiny)
        subnormal = tiny - zero
    occupied = fine > 0
    occupied[_NOT_NORMAL_IDX] = False
    where = np.flatnonzero(occupied)  # the occupied normal bins
    half = max(bins // 2, 1)
    if where.size:
        lo = float(_LOG_LOWER[where].min())
        hi = float(_LOG_UPPER[where].max())
    else:
        lo, hi = -1.0, 0.0
    if sampled and exact_max_abs is not None and np.isfinite(exact_max_abs) and exact_max_abs > 0 and where.size:
        top = int((np.array(exact_max_abs, dtype=np.float32).view(np.int32) >> SHIFT) + FINE_BINS // 2)
        hi = max(hi, float(_LOG_UPPER[top])) if _NORMAL[top] else hi
    grid = _linspace(lo, hi, half + 1)
    # assign each occupied fine bin (by its log-centre) to a coarse bin of its sign
    coarse = np.clip(np.searchsorted(grid, _CENTRES[where], side="right") - 1, 0, half - 1)
    slot = np.where(_NEG[where], half - 1 - coarse, half + coarse)
    counts = np.bincount(slot, weights=fine[where], minlength=2 * half).astype(np.int64)
    if sampled and exact_total is not None:
        counts = _scale_to(counts, int(exact_total) - zero - nan - posinf - neginf - subnormal)
    mags = 10.0 ** grid
    edges = np.concatenate([-mags[::-1][:-1], [0.0], mags[1:]])
    # edges[half] == 0 stands for 10**lo; subnormals are reported apart, never folded in
    return Histogram(layer=layer, of=of, step=step, edges=edges, counts=counts, zero=zero,
                     nan=nan, posinf=posinf, neginf=neginf, subnormal=subnormal, sampled=sampled)


def _linspace(lo: float, hi: float, num: int) -> np.ndarray:
    """``np.linspace(lo, hi, num)`` for ``hi > lo``, bit for bit (its own arithmetic: ``k *
    step + lo``, last value ``hi``) without its ~10 us of argument handling per call."""
    grid = np.arange(num, dtype=np.float64)
    grid *= (hi - lo) / (num - 1)
    grid += lo
    grid[-1] = hi
    return grid


def _scale_to(counts: np.ndarray, target: int) -> np.ndarray:
    """Integer counts proportional to ``counts`` that sum to ``target`` (largest remainders)."""
    total = int(counts.sum())
    if total <= 0 or target < 0 or total == target:
        return counts
    share = counts * (target / total)
    out = np.floor(share).astype(np.int64)
    short = target - int(out.sum())
    if short > 0:
        out[np.argsort(out - share, kind="stable")[:short]] += 1
    return out


def naive_counts(values: np.ndarray) -> dict[str, int]:
    """Reference counts for tests: what any histogram of ``values`` must agree with."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return {
        "nan": int(np.isnan(v).sum()),
        "posinf": int(np.isposinf(v).sum()),
        "neginf": int(np.isneginf(v).sum()),
        "zero": int((v == 0).sum()),
        "finite_nonzero": int((np.isfinite(v) & (v != 0)).sum()),
    }
