"""Element-wise comparison of analytic and numeric Jacobian entries, chunk by chunk.

An entry passes when ``|analytic - numeric| <= atol + rtol * |numeric|`` (the
``torch.allclose`` rule, numeric as reference). The worst entry is the one that
exceeds its own tolerance by the largest factor, so it is the entry that decides
the verdict, not merely the largest number. Blocks of columns stream through an
:class:`Accumulator`, so memory stays at one chunk whatever the Jacobian's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

PLOT_POINTS = 4096
"""Jacobian entries kept per tensor for report.plot() (the worst is always among them)."""


@dataclass
class Comparison:
    passed: bool
    max_abs_err: float
    max_rel_err: float  # |a - n| / max(|n|, atol): relative, but finite where numeric is 0
    worst_row: int  # position in the compared rows
    worst_col: int  # position in the compared columns
    analytic: float
    numeric: float
    n_bad: int
    n_entries: int
    excess: float  # the worst entry's error divided by its tolerance
    max_numeric: float  # largest |numeric| entry: 0 means the outputs do not depend on the tensor
    # Bounded samples for plotting.
    sample_analytic: np.ndarray
    sample_numeric: np.ndarray
    element_err: np.ndarray  # max |a - n| over outputs, per compared input element
    element_bad: np.ndarray  # bool per compared input element


def _array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.ascontiguousarray(x, dtype=np.float64)


class Accumulator:
    """Running comparison over column blocks of one tensor's Jacobian."""

    def __init__(self, n_cols: int, n_rows: int, atol: float, rtol: float, gen: torch.Generator) -> None:
        self.atol, self.rtol, self.gen = atol, rtol, gen
        self.total = n_cols * n_rows
        self.max_abs = self.max_rel = self.max_num = 0.0
        self.excess = -1.0
        self.worst = (0, 0, 0.0, 0.0)  # row, col, analytic, numeric
        self.n_bad = 0
        self.n_entries = 0
        self.elem_err = np.zeros(n_cols)
        self.elem_bad = np.zeros(n_cols, dtype=bool)
        self.samples_a: list[np.ndarray] = []
        self.samples_n: list[np.ndarray] = []

    def add(self, A: np.ndarray | torch.Tensor, N: np.ndarray | torch.Tensor, col0: int) -> None:
        """Compare blocks ``A`` vs ``N`` of shape (b, R): b compared columns (input elements)
        starting at compared column ``col0``, each over R output rows (Jacobian transposed,
        so that each column is contiguous).

        The arithmetic runs in numpy, single-threaded: these are memory-bound passes, and
        on a busy machine torch's intra-op threads wait on each other at every one of them.
        """
        A, N = _array(A), _array(N)
        b, R = A.shape
        if not A.size:
            return
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            err = np.subtract(A, N)
            np.abs(err, out=err)
            absn = np.abs(N)
            ratio = np.multiply(absn, self.rtol)
            ratio += self.atol
            np.divide(err, ratio, out=ratio)  # x/0 is inf (fails); 0/0 is NaN, fixed below
            per_col = ratio.max(axis=1)
            if np.isnan(per_col).any():  # NaN entries, or exact matches where the tolerance is 0
                ratio[np.isnan(ratio) & (err == 0)] = 0.0
                np.nan_to_num(ratio, copy=False, nan=math.inf)
                np.nan_to_num(err, copy=False, nan=math.inf)
                per_col = ratio.max(axis=1)
            c = int(per_col.argmax())
            r = int(ratio[c].argmax())
            if float(per_col[c]) > self.excess:
                self.excess = float(per_col[c])
                self.worst = (r, col0 + c, float(A[c, r]), float(N[c, r]))
            col_err = err.max(axis=1)
            self.max_abs = max(self.max_abs, float(col_err.max()))
            self.max_num = max(self.max_num, float(absn.max()))
            np.maximum(absn, max(self.atol, 1e-300), out=absn)
            self.max_rel = max(self.max_rel, float(np.divide(err, absn, out=err).max()))
        bad_cols = per_col > 1
        if bad_cols.any():
            self.n_bad += int((ratio[bad_cols] > 1).sum())
        self.n_entries += A.size
        self.elem_err[col0 : col0 + b] = col_err
        self.elem_bad[col0 : col0 + b] = bad_cols
        quota = min(A.size, math.ceil(PLOT_POINTS * A.size / max(self.total, 1)))
        if quota == A.size:
            pick = np.arange(A.size)
        else:
            pick = torch.randint(A.size, (quota,), generator=self.gen).numpy()
        self.samples_a.append(A.reshape(-1)[pick])
        self.samples_n.append(N.reshape(-1)[pick])

    def finish(self) -> Comparison:
        r, c, a, n = self.worst
        sa = np.concatenate(self.samples_a + [np.array([a])]) if self.n_entries else np.zeros(0)
        sn = np.concatenate(self.samples_n + [np.array([n])]) if self.n_entries else np.zeros(0)
        return Comparison(
            passed=self.n_bad == 0, max_abs_err=self.max_abs, max_rel_err=self.max_rel, worst_row=r, worst_col=c,
            analytic=a, numeric=n, n_bad=self.n_bad, n_entries=self.n_entries, excess=max(self.excess, 0.0),
            max_numeric=self.max_num, sample_analytic=sa, sample_numeric=sn,
            element_err=self.elem_err, element_bad=self.elem_bad,
        )


def compare(A: torch.Tensor, N: torch.Tensor, atol: float, rtol: float, gen: torch.Generator) -> Comparison:
    """Compare one analytic block ``A`` with its numeric block ``N`` (rows x cols)."""
    acc = Accumulator(A.shape[1], A.shape[0], atol, rtol, gen)
    acc.add(A.T.contiguous(), N.T.contiguous(), 0)
    return acc.finish()
