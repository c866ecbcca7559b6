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

EXTRA_COUNTS = ("zero", "nan", "posinf", "neginf", "subnormal")
"""The counts kept apart from the bins, in the order the history stores them."""

FINE_BINS = 2048  # sign(1) + exponent(8) + 2 mantissa bits
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
            f"+inf={self.posinf}, -inf={self.neginf})"
        )


def rebin(fine: np.ndarray, bins: int, *, layer: str = "", of: str = "", step: int = -1,
          exact_zero: int | None = None) -> Histogram:
    """Turn 2048 fine counts into a :class:`Histogram` with ``bins`` bins.

    ``exact_zero`` (from the summary statistics) separates true zeros from subnormals,
    which share exponent 0 in the fine bins.
    """
    fine = np.asarray(fine, dtype=np.int64)
    special = _EXP == _EXP_SPECIAL
    is_inf = special & (_MANT == 0)
    nan = int(fine[special & ~is_inf].sum())
    posinf = int(fine[is_inf & ~_NEG].sum())
    neginf = int(fine[is_inf & _NEG].sum())
    tiny = int(fine[_EXP == _EXP_ZERO].sum())  # zeros and float32 subnormals
    zero = tiny if exact_zero is None else min(int(exact_zero), tiny)
    subnormal = tiny - zero
    normal = (_EXP != _EXP_ZERO) & ~special
    occupied = normal & (fine > 0)
    half = max(bins // 2, 1)
    if occupied.any():
        lo = float(_LOG_LOWER[occupied].min())
        hi = float(_LOG_UPPER[occupied].max())
    else:
        lo, hi = -1.0, 0.0
    grid = np.linspace(lo, hi, half + 1)
    counts = np.zeros(2 * half, dtype=np.int64)
    # assign each occupied fine bin (by its log-centre) to a coarse bin of its sign
    centres = (_LOG_LOWER + _LOG_UPPER) / 2
    coarse = np.clip(np.searchsorted(grid, centres, side="right") - 1, 0, half - 1)
    pos = occupied & ~_NEG
    neg = occupied & _NEG
    np.add.at(counts, half + coarse[pos], fine[pos])
    np.add.at(counts, half - 1 - coarse[neg], fine[neg])
    mags = 10.0 ** grid
    edges = np.concatenate([-mags[::-1][:-1], [0.0], mags[1:]])
    # edges[half] == 0 stands for 10**lo; subnormals are reported apart, never folded in
    return Histogram(layer=layer, of=of, step=step, edges=edges, counts=counts, zero=zero,
                     nan=nan, posinf=posinf, neginf=neginf, subnormal=subnormal)


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
