"""Fast mode: one seeded random projection vᵀJu per checked tensor, then a precise re-check on failure.

vᵀJu costs one backward pass (shared by all tensors) and two calls of ``fn`` per tensor,
whatever the size, and a wrong gradient almost surely changes it. The tolerance is the
element-wise rule carried through the projection: ``atol·‖u‖₁·‖v‖₁ + rtol·|numeric|``.
A projection cannot say *where* a gradient is wrong, so a failing tensor is re-checked
element-wise (all elements when within the full-mode bounds, else ``samples`` random
ones, default ``RECHECK_SAMPLES``) to name its worst entries.
"""

from __future__ import annotations

import torch

from . import full
from .evaluate import Evaluator
from .full import check_elementwise
from .jacobian import CHUNK_ELEMENTS, AnalyticJacobian
from .report import TensorCheck

RECHECK_SAMPLES = 512
"""Elements re-checked per failing tensor in fast mode when the tensor is too large for all."""


def _unit(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    # Non-negative directions (as torch's fast mode uses): a systematic error, such as a
    # missing factor, then adds up over elements instead of cancelling out.
    x = torch.rand(n, generator=gen, dtype=torch.float64)
    return (x / x.norm().clamp_min(1e-300)).to(device)


def run_fast(ev: Evaluator, eps: float, atol: float, rtol: float, samples: int | None,
             gen: torch.Generator) -> list[TensorCheck]:
    M = ev.layout.size
    v = _unit(M, gen, ev.y0.device)
    us = [_unit(b.numel(), gen, b.device) for b in ev.bases]
    aj = AnalyticJacobian(ev, gen)
    analytic = [float(g.reshape(-1) @ u) for g, u in zip(aj.project(v), us, strict=True)]

    # Numeric J u for every tensor: +u and -u rows per tensor, in as few batched calls as fit.
    T = len(ev.bases)
    numeric = [0.0] * T
    total = sum(b.numel() for b in ev.bases) + M
    groups = [list(range(T))] if 2 * T * total <= CHUNK_ELEMENTS else [[i] for i in range(T)]
    with torch.no_grad():
        for group in groups:
            points = {}
            for pos, i in enumerate(group):
                p = ev.bases[i].reshape(1, -1).repeat(2 * len(group), 1)
                p[2 * pos] += eps * us[i]
                p[2 * pos + 1] -= eps * us[i]
                points[i] = p.reshape(2 * len(group), *ev.bases[i].shape)
            y = ev.batched(points)
            for pos, i in enumerate(group):
                numeric[i] = float(((y[2 * pos] - y[2 * pos + 1]) / (2 * eps)) @ v)

    rows: list[TensorCheck | None] = []
    v1 = float(v.abs().sum())
    failing = []
    for i, slot in enumerate(ev.spec.checked):
        a, n = analytic[i], numeric[i]
        err = abs(a - n)
        tol = atol * float(us[i].abs().sum()) * v1 + rtol * abs(n)
        ok = err <= tol
        if ok:
            rows.append(TensorCheck(
                name=slot.name, kind=slot.kind, shape=slot.shape, dtype=str(slot.dtype).replace("torch.", ""),
                passed=True, max_abs_err=err, max_rel_err=err / max(abs(n), atol, 1e-300),
                worst_index=None, worst_output=None, output=", ".join(ev.layout.names), analytic=a, numeric=n,
                method="projection vᵀJu",
                excess=err / tol if tol > 0 else 0.0,
            ))
        else:
            rows.append(None)
            failing.append((i, a, n))
    for i, a, n in failing:
        size = ev.bases[i].numel()
        fits = size <= full.MAX_FULL_ELEMENTS and M * size <= full.MAX_FULL_ENTRIES
        k = None if fits and samples is None else (samples or RECHECK_SAMPLES)
        row = check_elementwise(ev, aj, [i], eps, atol, rtol, k, gen)[i]
        proj = f"vᵀJu: analytic {a:.6g} vs numeric {n:.6g}"
        if row.passed and row.plot_data is not None and not row.plot_data.complete:
            # The sample missed the bad entries the projection saw: the projection stands.
            row.passed = False
            row.note = f"{proj} disagree, but the {row.method} re-checked all agree; the bad entries lie elsewhere"
        elif row.passed:
            row.note = f"{proj} disagreed, the element-wise re-check passed (numerical noise in the projection)"
        else:
            row.note = f"{proj}; {row.note}" if row.note else proj
        row.method = f"projection, then {row.method}"
        rows[i] = row
    return rows
