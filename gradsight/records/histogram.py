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
    none = -1
    rows = rebin_many(np.asarray(fine, dtype=np.int64)[None], bins,
                      exact_zero=[none if exact_zero is None else int(exact_zero)],
                      exact_nonfinite=[(none,) * 3 if exact_nonfinite is None else tuple(exact_nonfinite)],
                      exact_total=[none if exact_total is None else int(exact_total)],
                      exact_max_abs=[np.nan if exact_max_abs is None else float(exact_max_abs)])
    return rows.histogram(0, layer=layer, of=of, step=step)


@dataclass(frozen=True)
class Rebinned:
    """:func:`rebin_many`'s result: row ``k`` of each array is one histogram."""

    edges: np.ndarray      # (H, bins + 1)
    counts: np.ndarray     # (H, bins)
    extra: np.ndarray      # (H, len(EXTRA_COUNTS)), in that order

    def histogram(self, k: int, *, layer: str = "", of: str = "", step: int = -1) -> Histogram:
        extra = {c: int(v) for c, v in zip(EXTRA_COUNTS, self.extra[k], strict=True)}
        return Histogram(layer=layer, of=of, step=step, edges=self.edges[k], counts=self.counts[k], **extra)


def rebin_many(fine: np.ndarray, bins: int, *, exact_zero=None, exact_nonfinite=None, exact_total=None,
               exact_max_abs=None) -> Rebinned:
    """:func:`rebin` for ``H`` histograms at once (``fine``: ``(H, 2048 or FINE_SLOTS)``), in
    whole-array numpy ops: a step's histograms cost one pass instead of ~40 us each.

    The exact values are per row, a missing one given as -1 (``exact_zero``, ``exact_total``,
    each of ``exact_nonfinite``'s three) or NaN (``exact_max_abs``); ``None`` means none for
    any row. Row for row the same numbers as :func:`rebin` (the grid is ``np.linspace``'s own
    arithmetic, and a bin's coarse index is ``searchsorted``'s count of grid values <= its centre).
    """
    fine = np.asarray(fine, dtype=np.int64)
    H = fine.shape[0]
    if fine.shape[1] >= FINE_SLOTS:
        sample_zero, sampled = fine[:, FINE_BINS], fine[:, FINE_BINS + 1]
    else:
        sample_zero = sampled = np.zeros(H, dtype=np.int64)
    f = fine[:, :FINE_BINS]
    nan, posinf, neginf = f[:, _NAN_IDX].sum(1), f[:, _POSINF_IDX].sum(1), f[:, _NEGINF_IDX].sum(1)
    if exact_nonfinite is not None:
        ex = np.asarray(exact_nonfinite, dtype=np.int64).reshape(H, 3)
        given = ex[:, 0] >= 0
        nan, posinf, neginf = (np.where(given, ex[:, j], c) for j, c in enumerate((nan, posinf, neginf)))
    tiny = f[:, _TINY_IDX].sum(1)  # zeros and float32 subnormals
    ez = np.full(H, -1, dtype=np.int64) if exact_zero is None else np.asarray(exact_zero, dtype=np.int64)
    has_ez = ez >= 0
    is_sampled = sampled > 0
    # sampled: the sample's own zeros tell zeros from subnormals; the exact count is the tensor's
    zero = np.where(is_sampled, np.where(has_ez, ez, sample_zero), np.where(has_ez, np.minimum(ez, tiny), tiny))
    subnormal = np.where(is_sampled, np.maximum(tiny - sample_zero, 0), tiny - zero)
    occupied = f > 0
    occupied[:, _NOT_NORMAL_IDX] = False
    at = np.flatnonzero(occupied)  # the occupied normal bins, row by row
    r, b = at // FINE_BINS, at % FINE_BINS
    per_row = np.bincount(r, minlength=H)
    any_occupied = per_row > 0
    half = max(bins // 2, 1)
    lo, hi = np.full(H, -1.0), np.full(H, 0.0)
    if at.size:
        starts = (np.cumsum(per_row) - per_row)[any_occupied]
        lo[any_occupied] = np.minimum.reduceat(_LOG_LOWER[b], starts)
        hi[any_occupied] = np.maximum.reduceat(_LOG_UPPER[b], starts)
    if exact_max_abs is not None:
        m = np.asarray(exact_max_abs, dtype=np.float64).reshape(H)
        with np.errstate(invalid="ignore"):
            ok = is_sampled & np.isfinite(m) & (m > 0) & any_occupied
        if ok.any():
            top = (m[ok].astype(np.float32).view(np.int32) >> SHIFT).astype(np.int64) + FINE_BINS // 2
            hi[ok] = np.where(_NORMAL[top], np.maximum(hi[ok], _LOG_UPPER[top]), hi[ok])
    step = (hi - lo) / half
    grid = np.arange(half + 1, dtype=np.float64)[None, :] * step[:, None]  # np.linspace(lo, hi)'s arithmetic
    grid += lo[:, None]
    grid[:, -1] = hi
    # each occupied fine bin goes to the coarse bin of its sign that holds its log-centre
    coarse = np.clip(_grid_count(grid, lo, step, r, _CENTRES[b]) - 1, 0, half - 1)
    slot = np.where(_NEG[b], half - 1 - coarse, half + coarse)
    counts = np.bincount(r * (2 * half) + slot, weights=f[r, b], minlength=H * 2 * half)
    counts = counts.astype(np.int64).reshape(H, 2 * half)
    if exact_total is not None:
        total = np.asarray(exact_total, dtype=np.int64).reshape(H)
        scale = np.flatnonzero(is_sampled & (total >= 0))
        if scale.size:
            target = total[scale] - zero[scale] - nan[scale] - posinf[scale] - neginf[scale] - subnormal[scale]
            counts[scale] = _scale_to(counts[scale], target)
    mags = 10.0 ** grid
    # edges[:, half] == 0 stands for 10**lo; subnormals are reported apart, never folded in
    edges = np.concatenate([-mags[:, ::-1][:, :-1], np.zeros((H, 1)), mags[:, 1:]], axis=1)
    named = {"zero": zero, "nan": nan, "posinf": posinf, "neginf": neginf, "subnormal": subnormal, "sampled": sampled}
    extra = np.stack([named[c] for c in EXTRA_COUNTS], axis=1)
    return Rebinned(edges=edges, counts=counts, extra=extra)


def _grid_count(grid: np.ndarray, lo: np.ndarray, step: np.ndarray, r: np.ndarray, x: np.ndarray) -> np.ndarray:
    """For each value ``x[k]``, how many values of its row ``grid[r[k]]`` (ascending, evenly
    spaced from ``lo`` by ``step``) are <= it: ``np.searchsorted(grid[r], x, side="right")``,
    exactly, for all rows at once — an arithmetic guess, then moved until it holds."""
    n = grid.shape[1]
    padded = np.concatenate([np.full((grid.shape[0], 1), -np.inf), grid, np.full((grid.shape[0], 1), np.inf)], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        i = np.clip(np.floor((x - lo[r]) / step[r]), -1, n - 1).astype(np.int64) + 1
    for _ in range(n + 1):  # padded[r, i] <= x < padded[r, i + 1] holds after one round or two
        down = padded[r, i] > x
        up = padded[r, i + 1] <= x
        if not (down.any() or up.any()):
            return i
        i = i - down + up
    raise AssertionError("grid count did not settle")  # unreachable for an ascending grid


def _scale_to(counts: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row, integer counts proportional to ``counts`` that sum to ``target`` (largest
    remainders; ties to the lower bin); a row with no counts, a negative target or already
    that total is kept as it is."""
    total = counts.sum(1)
    rows = np.flatnonzero((total > 0) & (target >= 0) & (total != target))
    if not rows.size:
        return counts
    c, t = counts[rows], target[rows]
    share = c * (t / total[rows])[:, None]
    out = np.floor(share).astype(np.int64)
    short = t - out.sum(1)
    order = np.argsort(out - share, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(c.shape[1])[None, :], axis=1)
    out += (rank < short[:, None]) & (short > 0)[:, None]
    counts = counts.copy()
    counts[rows] = out
    return counts


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
