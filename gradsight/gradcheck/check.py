"""``gradcheck``: the public entry point that validates arguments and runs a mode."""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from typing import Any

import torch

from .errors import GradcheckError
from .evaluate import Evaluator
from .fast import run_fast
from .full import run_full
from .inputs import CallSpec, describe
from .registry import record
from .report import GradcheckReport
from .rng import ForkedRNG

MODES = ("full", "fast")


def _positive(name: str, x: Any, *, allow_zero: bool) -> float:
    ok = isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) and (
        x >= 0 if allow_zero else x > 0)
    if not ok:
        want = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise GradcheckError(f"{name} must be {want}, received {x!r} ({describe(x)}).")
    return float(x)


def gradcheck(fn: Callable, *inputs: Any, mode: str = "full", eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, seed: int = 0, samples: int | None = None,
              kwargs: dict[str, Any] | None = None) -> GradcheckReport:
    """Check the backward of ``fn`` against central finite differences, in float64.

    ``fn`` is any callable (``MyFunction.apply`` too) or an ``nn.Module``, whose
    parameters that require grad are checked after the inputs. Checked inputs: those
    that require grad if any does, otherwise every floating-point tensor; everything
    floating-point is copied to float64, so float32/16 and bfloat16 tensors work and
    the user's tensors, module, ``.grad`` and RNG state are left as they were.

    ``mode="full"`` compares every Jacobian entry (up to ``MAX_FULL_ELEMENTS`` input
    elements and ``MAX_FULL_ENTRIES`` entries; past them pass
    ``samples=k`` to compare k random elements per tensor instead); ``mode="fast"``
    compares one seeded random projection vᵀJu per tensor and re-checks failures
    element-wise. An entry passes when ``|analytic - numeric| <= atol + rtol*|numeric|``.
    ``seed`` fixes the RNG replayed for every call of ``fn`` (dropout) and the random
    choices of the check. ``kwargs`` are keyword arguments for ``fn``.

    Returns a :class:`GradcheckReport`; a wrong gradient gives a failing report, an
    uncheckable call raises :class:`GradcheckError` saying why and what to do.
    """
    if mode not in MODES:
        raise GradcheckError(f"mode must be 'full' or 'fast', received {mode!r}.")
    eps = _positive("eps", eps, allow_zero=False)
    if eps >= 1:
        raise GradcheckError(f"eps is the finite-difference step and must be small (default 1e-6), received {eps}.")
    atol = _positive("atol", atol, allow_zero=True)
    rtol = _positive("rtol", rtol, allow_zero=True)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise GradcheckError(f"seed must be an int, received {seed!r}.")
    if samples is not None and (not isinstance(samples, numbers.Integral) or isinstance(samples, bool)
                                or samples < 1):
        raise GradcheckError(f"samples must be None (all elements) or an int >= 1, received {samples!r}.")

    start = time.perf_counter()
    spec = CallSpec(fn, inputs, kwargs)
    gen = torch.Generator().manual_seed(int(seed))
    with ForkedRNG(int(seed), spec.devices) as rng:
        ev = Evaluator(spec, rng, atol=atol, eps=eps)
        run = run_full if mode == "full" else run_fast
        rows = run(ev, eps, atol, rtol, None if samples is None else int(samples), gen)
    notes = list(ev.notes)
    if ev.use_vmap is False and ev.fallback_reason:
        notes.append(f"evaluated one call at a time (vmap could not batch {spec.name}: {ev.fallback_reason})")
    report = GradcheckReport(
        fn=spec.name, mode=mode, eps=eps, atol=atol, rtol=rtol, seed=int(seed), rows=rows,
        samples=None if samples is None else int(samples), notes=notes, batched=bool(ev.use_vmap),
        seconds=time.perf_counter() - start, outputs=ev.layout.outputs,
    )
    record(report)
    return report
