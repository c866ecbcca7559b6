"""Per-tensor summary statistics computed on the tensor's own device.

Why these primitives: on CPU, torch's float reductions (``sum``, ``vector_norm``,
``aminmax``) run at ~0.1-0.2 ns/element, while its comparisons that produce bool tensors
and ``count_nonzero`` are 5-20x slower (measured on this project's CI machine). So the
full summary (detail steps) is four float passes: sum, sum of squares, min/max, and the
number of non-zeros (on CPU a numpy ``!= 0`` count, see :func:`count_nonzero`; the
0-"norm" on a device); the every-step summary is the sum of squares
alone (:func:`measure`). Everything else (mean, std, L2 norm, zero fraction) is
derived on the host from these raw, *combinable* fields — combinable so that a module
called several times per step, or several backward passes (gradient accumulation),
merge into one row.

Non-finite counts: on an accelerator they are always computed (the kernels are
asynchronous, so they never block). On CPU there is no device to block, and reading a
scalar costs nothing, so the exact NaN/+Inf/-Inf counts are computed only when the
sum of squares says something is non-finite.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch

from ..records.fields import FIELDS

_IS_MIN = torch.tensor([name == "min" for name in FIELDS])
_IS_MAX = torch.tensor([name == "max" for name in FIELDS])
_HALF = (torch.float16, torch.bfloat16)
_F32_MAX = float(torch.finfo(torch.float32).max)


def summarize(x: torch.Tensor) -> torch.Tensor:
    """Return a float32 row of :data:`FIELDS` for ``x`` (on ``x.device``, no host sync on GPU)."""
    flat = _flat32(x)
    if flat.numel() == 0:
        return torch.tensor([0.0, 0.0, float("inf"), float("-inf"), 0, 0, 0, 0], device=x.device)
    total = flat.sum()
    sumsq = sum_of_squares(flat)
    if flat.device.type == "cpu":  # numpy where it beats torch's dispatch (count_nonzero, small min/max)
        a = flat.numpy()
        sq = float(sumsq)  # free on CPU: no device to wait for
        if math.isfinite(sq):
            lo, hi = _min_max(flat, a)
            return torch.from_numpy(np.array([float(total), sq, lo, hi, count_nonzero(a), 0, 0, 0],
                                             dtype=np.float32))
        nan, posinf, neginf = _nonfinite_counts(flat)
        lo, hi = torch.aminmax(flat)  # NaN-propagating, as on the device
        nonzero = torch.tensor(float(count_nonzero(a)) - float(nan))  # NaN != 0 counts: taken out again
        return torch.stack([total, sumsq, lo, hi, nonzero, nan, posinf, neginf])
    return device_row(flat, total, sumsq)


_CHUNK = 1 << 18
"""Elements per comparison in :func:`count_nonzero`: a bounded (256 KB) temporary, cache-sized."""


def count_nonzero(a: np.ndarray) -> int:
    """The number of non-zero values of a 1-D float array (NaN counts as non-zero).

    ``np.count_nonzero`` on a float array runs at ~0.7 ns/element here; a ``!= 0`` into a
    bool array and ``count_nonzero`` of that, ~0.1-0.25 (3-7x faster, measured on 16k-8M
    floats). In chunks so that the bool temporary stays small whatever the tensor's size.
    """
    n = a.size
    if n <= _CHUNK:
        return int(np.count_nonzero(a != 0))
    return sum(int(np.count_nonzero(a[i:i + _CHUNK] != 0)) for i in range(0, n, _CHUNK))


def _min_max(flat: torch.Tensor, a: np.ndarray) -> tuple[float, float]:
    """numpy's min and max for small tensors (no dispatch cost); torch's ``aminmax`` (one
    pass, on the intra-op pool) from :data:`PARALLEL_MIN` up: 2-3x faster there."""
    if a.size >= PARALLEL_MIN:
        lo, hi = torch.aminmax(flat)
        return float(lo), float(hi)
    return float(a.min()), float(a.max())


def device_row(flat: torch.Tensor, total: torch.Tensor, sumsq: torch.Tensor) -> torch.Tensor:
    """The full row on an accelerator: every field a device reduction, nothing read back
    (device-agnostic, so tested on CPU)."""
    lo, hi = torch.aminmax(flat)
    nan, posinf, neginf = _nonfinite_counts(flat)
    # the 0-"norm" counts x != 0 in one pass with no temporary (NaN != 0: taken out again)
    nonzero = torch.linalg.vector_norm(flat, ord=0) - nan
    return torch.stack([total, sumsq, lo, hi, nonzero, nan, posinf, neginf])


class Light(NamedTuple):
    """The light summary on an accelerator: the sum of squares and the (NaN, +Inf, -Inf)
    counts as device tensors, written into the step buffer as they are (the other fields of
    a light row stay "not measured")."""

    sumsq: torch.Tensor
    counts: torch.Tensor


def measure(x: torch.Tensor, detail: bool, host: bool | None = None) -> torch.Tensor | float | Light:
    """A full row of :data:`FIELDS` on detail steps; otherwise the light every-step summary.

    Light: one pass, the sum of squares (L2 norm; non-finite if anything is). On the host
    (CPU; ``host`` defaults to the tensor's device) it is returned as a Python float (reading
    it is free there, and the buffer is host memory), and a non-finite value — or one beyond
    float32's range — gets the full row, since that is when the extra numbers matter. On an
    accelerator nothing can be read without waiting, so the light summary is a :class:`Light`:
    the sum of squares and the non-finite counts, computed asynchronously in 9 kernels.
    """
    if detail:
        return summarize(x)
    x = x.detach()
    if x.dtype is torch.float64:
        x = x.float()  # float64 reductions are ~10x slower on CPU; half types accumulate in float32
    if x.numel() == 0:
        return summarize(x)
    if host is None:
        host = x.device.type == "cpu"
    if host:
        value = l2_norm(x).item()
        value *= value
        return value if value <= _F32_MAX else summarize(x)  # NaN and Inf fail the test too
    half = x.dtype in _HALF
    # one reduction (a device reduction is parallel as it is: no row split), squared on the device
    sumsq = torch.linalg.vector_norm(x, dtype=torch.float32 if half else None).square()
    counts = torch.stack([torch.isnan(x).sum(), torch.isposinf(x).sum(), torch.isneginf(x).sum()])
    return Light(sumsq, counts)


def sum_of_squares(flat: torch.Tensor) -> torch.Tensor:
    """||x||^2 through torch's own reduction (see :func:`l2_norm`)."""
    return l2_norm(flat).square()


ROWS = 64
PARALLEL_MIN = 1 << 18
"""Tensors from this size up (and divisible into :data:`ROWS` rows) are reduced row-wise."""


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """||x|| as a 0-dim tensor, for any shape; float32 and half types accumulate in float32.

    Why not one ``vector_norm`` over everything: a full reduction to one value runs on one
    thread in torch's CPU kernel (measured 155 us per million floats, the same with 1 or 2
    threads), while a reduction over the rows of a ``(64, n/64)`` view runs on torch's
    intra-op pool like the training's own ops (~60 us at 2 threads); the 64 row norms are
    then folded in a second, tiny op. Not ``torch.dot``: right after a matmul, BLAS's dot
    waits on the BLAS thread pool that is still spinning — measured 7.9 ms instead of 60 us
    for 131k floats inside a forward hook.
    """
    half = x.dtype in _HALF
    n = x.numel()
    if n >= PARALLEL_MIN and n % ROWS == 0 and x.is_contiguous():
        rows = torch.linalg.vector_norm(x.view(ROWS, -1), dim=1, dtype=torch.float32 if half else None)
        return torch.linalg.vector_norm(rows)
    return torch.linalg.vector_norm(x, dtype=torch.float32 if half else None)


def _flat32(x: torch.Tensor) -> torch.Tensor:
    x = x.detach()
    if x.dtype in _HALF or x.dtype == torch.float64:
        x = x.float()  # half sums overflow; float64 reductions are ~10x slower on CPU
    return x.reshape(-1)


def _nonfinite_counts(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.isnan(flat).sum().float(),
        torch.isposinf(flat).sum().float(),
        torch.isneginf(flat).sum().float(),
    )


@functools.lru_cache(maxsize=16)
def _masks(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The min/max field masks on ``device``, copied there once (a host-to-device copy of a
    pageable tensor waits for the device: once, not per call)."""
    return _IS_MIN.to(device), _IS_MAX.to(device)


def combine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Merge two rows of :data:`FIELDS` (several calls or backward passes in one step)."""
    is_min, is_max = _masks(a.device)
    return torch.where(is_min, torch.minimum(a, b), torch.where(is_max, torch.maximum(a, b), a + b))
