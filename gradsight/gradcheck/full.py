"""Full mode: compare every Jacobian entry (or those of a seeded random subset of elements, ``samples=``).

Cost: two evaluations of ``fn`` per input element (batched through vmap) and backward
passes for the analytic side: one per output element (rows) or one per compared input
element (columns, by double backward), whichever is fewer. Comparison streams over
column chunks, so memory stays bounded. Past the bounds below, full mode refuses and
points to ``mode="fast"`` or ``samples=``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..progress import Progress
from .compare import Accumulator
from .errors import GradcheckError
from .evaluate import Evaluator
from .jacobian import AnalyticJacobian, NoColumns, chunk_size, numeric_chunks
from .report import PlotData, TensorCheck

MAX_FULL_ELEMENTS = 32_768
"""Most input elements (summed over checked tensors) full mode perturbs; each costs two calls of fn."""

MAX_FULL_ENTRIES = 2**24
"""Most Jacobian entries (output elements x input elements) full mode compares."""

MAX_ROW_BLOCK = 2**22
"""Most analytic entries held at once when they come by rows (32 MiB of float64)."""


COMPARE_BLOCK = 2**19
"""Jacobian entries gathered before they are compared (4 MiB for each of analytic and numeric): the
comparison's passes then run near the cache, measured 1.4-2x faster than 32 MiB blocks."""


class FullModeTooLarge(GradcheckError):
    """Full mode was asked for more than MAX_FULL_ELEMENTS / MAX_FULL_ENTRIES."""


def _columns(ev: Evaluator, which: list[int], samples: int | None, gen: torch.Generator) -> list[torch.Tensor]:
    """Per-tensor columns to compare (all, or ``samples`` random ones); refuse oversize full checks."""
    n = [ev.bases[i].numel() if i in which else 0 for i in range(len(ev.bases))]
    M, total = ev.layout.size, sum(n)
    if samples is None:
        if total > MAX_FULL_ELEMENTS or M * total > MAX_FULL_ENTRIES:
            sizes = ", ".join(f"{ev.spec.checked[i].name} {ev.bases[i].numel():,}" for i in which)
            raise FullModeTooLarge(
                f"full mode would compare {M:,} output elements x {total:,} input elements ({sizes}) = "
                f"{M * total:,} Jacobian entries; the bounds are {MAX_FULL_ELEMENTS:,} input elements "
                f"and {MAX_FULL_ENTRIES:,} entries (gradsight.gradcheck.MAX_FULL_*). Use "
                "mode='fast' (random projections, a few calls whatever the size) or samples=256 "
                "(compare 256 random elements of each tensor)."
            )
        return [torch.arange(k) for k in n]
    return [torch.randperm(k, generator=gen)[:samples].sort().values for k in n]


def check_elementwise(ev: Evaluator, aj: AnalyticJacobian, which: list[int], eps: float, atol: float,
                      rtol: float, samples: int | None, gen: torch.Generator) -> dict[int, TensorCheck]:
    """Compare analytic and numeric Jacobian entries of the checked tensors ``which``."""
    cols = _columns(ev, which, samples, gen)
    M = ev.layout.size
    picked = sum(len(cols[i]) for i in which)
    by_rows = picked >= M and M * picked <= MAX_ROW_BLOCK
    analytic = aj.rows(torch.arange(M), cols) if by_rows else None
    result = {}
    progress = Progress(picked, "gradcheck")  # a bar only when the check runs past ~2 s
    for i in which:
        rows = None  # all output rows
        method_note = ""
        blocks = analytic
        if blocks is None:
            try:
                aj.columns(i, cols[i][:1])  # raises NoColumns early if double backward cannot work
            except NoColumns:
                one = [c if j == i else c[:0] for j, c in enumerate(cols)]
                if M * len(cols[i]) > MAX_ROW_BLOCK:  # too many rows to hold: a random subset of them
                    rows = torch.randperm(M, generator=gen)[: max(1, MAX_ROW_BLOCK // max(len(cols[i]), 1))]
                    rows = rows.sort().values
                    method_note = f" x {len(rows):,} random of {M:,} outputs (backward not differentiable twice)"
                blocks = aj.rows(torch.arange(M) if rows is None else rows, one)
        if blocks is not None:  # (columns, rows): each column contiguous
            block_t = np.ascontiguousarray(blocks[i].detach().to("cpu", torch.float64).numpy().T)
        R = M if rows is None else len(rows)
        acc = Accumulator(len(cols[i]), R, atol, rtol, gen)
        pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # compared in blocks: fewer, larger ops
        for s, e, numeric in numeric_chunks(ev, i, cols[i], rows, eps):
            a = block_t[s:e] if blocks is not None else _columns_or_rows(aj, i, cols[i][s:e])
            pending.append((s, a, numeric))
            progress.update(e - s)
            if sum(p[2].size for p in pending) >= COMPARE_BLOCK:
                _flush(acc, pending)
        _flush(acc, pending)
        result[i] = _row(ev, aj, i, cols[i], rows, acc, method_note)
    progress.close()
    return result


def _flush(acc: Accumulator, pending: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
    if pending:
        if len(pending) == 1:
            acc.add(pending[0][1], pending[0][2], pending[0][0])
        else:
            acc.add(np.concatenate([p[1] for p in pending]), np.concatenate([p[2] for p in pending]), pending[0][0])
        pending.clear()


def _columns_or_rows(aj: AnalyticJacobian, i: int, cols: torch.Tensor) -> np.ndarray:
    try:
        block = aj.columns(i, cols)
    except NoColumns:
        one = [cols if j == i else cols[:0] for j in range(len(aj.leaves))]
        block = aj.rows(torch.arange(aj.ev.layout.size), one)[i].T
    return np.ascontiguousarray(block.detach().to("cpu", torch.float64).numpy())


def _row(ev: Evaluator, aj: AnalyticJacobian, i: int, cols: torch.Tensor, rows: torch.Tensor | None,
         acc: Accumulator, method_note: str) -> TensorCheck:
    slot = ev.spec.checked[i]
    c = acc.finish()
    n, k = slot.numel, len(cols)
    method = (f"all {n:,} elements" if k == n else f"{k:,} random of {n:,} elements") + method_note
    note = ""
    if aj.unused[i] or not aj.diff:
        if c.passed and c.max_numeric == 0:
            note = "the outputs do not depend on it (both gradients are zero)"
        else:
            note = ("backward gives it no gradient, yet the outputs change with it: "
                    "is it detached (.detach(), .item(), numpy, torch.no_grad) inside fn?")
    elif not c.passed:
        note = f"{c.n_bad:,} of {c.n_entries:,} entries outside tolerance"
    col_flat = cols.cpu().numpy()
    worst_flat = int(col_flat[c.worst_col]) if k else 0
    out_row = c.worst_row if rows is None else int(rows[c.worst_row])
    return TensorCheck(
        name=slot.name, kind=slot.kind, shape=slot.shape, dtype=str(slot.dtype).replace("torch.", ""),
        passed=c.passed, max_abs_err=c.max_abs_err, max_rel_err=c.max_rel_err,
        worst_index=tuple(int(j) for j in np.unravel_index(worst_flat, slot.shape)) if k else None,
        worst_output=ev.layout.locate(out_row) if k and ev.layout.size else None,
        output=ev.layout.output_of(out_row) if k and ev.layout.size else None,
        analytic=c.analytic, numeric=c.numeric, method=method, note=note, excess=c.excess,
        plot_data=PlotData(
            sample_analytic=c.sample_analytic, sample_numeric=c.sample_numeric,
            element_err=c.element_err, element_bad=c.element_bad, element_index=col_flat,
            complete=k == n and rows is None,
        ),
    )


def run_full(ev: Evaluator, eps: float, atol: float, rtol: float, samples: int | None,
             gen: torch.Generator) -> list[TensorCheck]:
    aj = AnalyticJacobian(ev, gen)
    which = list(range(len(ev.bases)))
    checks = check_elementwise(ev, aj, which, eps, atol, rtol, samples, gen)
    return [checks[i] for i in which]


__all__ = ["MAX_FULL_ELEMENTS", "MAX_FULL_ENTRIES", "FullModeTooLarge", "check_elementwise", "run_full",
           "chunk_size"]
