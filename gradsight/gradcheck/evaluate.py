"""Evaluate ``fn`` at many perturbed points: batched with ``torch.func.vmap``, else one by one.

A full check needs two evaluations per input element. Batching them through vmap turns
thousands of Python-level calls into a few vectorised ones (classic ``autograd.Function``s
run forward-only for this, see classic.py). Functions vmap cannot run (``.item()``,
numpy, data-dependent control flow, in-place writes to unbatched state such as BatchNorm
running stats) fall back to a loop. The first batched call also evaluates an unperturbed
point and compares it with a plain call, so a function that vmap runs *differently*
falls back too.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from .classic import classic_functions, forward_only
from .errors import GradcheckError
from .inputs import CallSpec
from .outputs import OutputLayout
from .rng import ForkedRNG

VMAP_MIN_BATCH = 8
"""Smaller batches (fast mode's few points) run as plain calls: vmap's set-up costs more."""

_DTYPE_WORDS = re.compile(r"dtype|Double|Float|Half|BFloat16|expected scalar type|same type", re.IGNORECASE)


class Evaluator:
    """Calls ``fn`` through a :class:`CallSpec`, each call from the same forked RNG state."""

    def __init__(self, spec: CallSpec, rng: ForkedRNG, atol: float, eps: float) -> None:
        self.spec = spec
        self.rng = rng
        self.bases = [s.value for s in spec.checked]
        self.use_vmap: bool | None = None  # None: not tried yet
        self.classic: list[type] = []  # classic autograd.Functions in fn, run forward-only under vmap
        self.fallback_reason: str | None = None
        self.notes: list[str] = []
        # The first call builds the autograd graph the analytic side differentiates, and tells
        # which outputs are differentiable (requires_grad), hence compared. fn gets clones of
        # the leaves, so it may write to its inputs in place.
        self.leaves = [b.detach().clone().requires_grad_(True) for b in self.bases]
        with torch.enable_grad():
            first = self._first_call()
        self.layout = OutputLayout(first, spec.name)
        self.outs = self.layout.tensors(first)
        self.classic = classic_functions([x for x in tree_flatten(first)[0] if isinstance(x, torch.Tensor)])
        with torch.no_grad():
            self.y0 = self.layout.flat(first).detach()
            self._check_finite(self.outs)
            self._check_deterministic(self.layout.flat(self.call(self.center())), atol, eps)
        if self.layout.has_complex:
            self.notes.append("complex outputs are checked as (real, imaginary) pairs: the last index of "
                              "their elements is 0 for the real part, 1 for the imaginary part.")
        odd = [f"{n} ({d})" for n, d in zip(self.layout.names, self.layout.dtypes, strict=True) if d != torch.float64]
        if odd:
            self.notes.append(
                f"{spec.name} returned {', '.join(odd)} from float64 inputs: it casts internally, so "
                "finite differences lose precision; expect larger errors."
            )

    # -- single calls ---------------------------------------------------------------------------
    def center(self) -> list[torch.Tensor]:
        """Fresh copies of the check point (fn may write to its arguments)."""
        return [b.clone() for b in self.bases]

    def call(self, values: list[torch.Tensor]) -> Any:
        self.rng.reset()
        return self.spec.call(values)

    def flat(self, values: list[torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
        y = self.layout.flat(self.call(values))
        return y if rows is None else y[rows]

    def _first_call(self) -> Any:
        try:
            return self.call([leaf.clone() for leaf in self.leaves])
        except GradcheckError:
            raise
        except Exception as e:
            hint = ""
            if _DTYPE_WORDS.search(str(e)):
                hint = (
                    " gradcheck calls fn on float64 copies so that finite differences are precise; "
                    "fn (or a tensor it captures from outside) seems to insist on another dtype. Create "
                    "tensors inside fn with dtype=x.dtype, and if fn uses a module's parameters, pass the "
                    "module itself as fn so that its parameters are converted and checked too."
                )
            raise GradcheckError(
                f"{self.spec.name} raised {type(e).__name__} when called on float64 copies of the "
                f"inputs: {e}.{hint}"
            ) from e

    def _check_finite(self, outs: list[torch.Tensor]) -> None:
        for name, o in zip(self.layout.names, outs, strict=True):
            bad = ~torch.isfinite(o)
            if bad.any():
                first = self.layout.locate(int(self.layout.offsets[self.layout.names.index(name)])
                                           + int(bad.reshape(-1).nonzero()[0, 0]))
                raise GradcheckError(
                    f"{self.spec.name} returned {int(torch.isnan(o).sum())} NaN and "
                    f"{int(torch.isinf(o).sum())} infinite values in {name} (first at {first}) at the "
                    "point being checked; gradients cannot be compared there. Check at inputs inside "
                    "the function's domain (e.g. positive values for log/sqrt)."
                )

    def _check_deterministic(self, y1: torch.Tensor, atol: float, eps: float) -> None:
        if not y1.numel():
            return
        diff = (self.y0 - y1).abs()
        tol = 0.1 * atol * eps + 4 * torch.finfo(torch.float64).eps * float(self.y0.abs().max())
        if float(diff.max()) > tol:
            at = self.layout.locate(int(diff.argmax()))
            raise GradcheckError(
                f"{self.spec.name} is not deterministic: two calls at the same inputs, from the same RNG "
                f"state, differ by {float(diff.max()):.3g} at {at}. Finite differences need identical "
                "calls. gradcheck already replays the global torch RNG for every call (so dropout and "
                "torch.rand inside fn are fine); randomness from elsewhere is not: a torch.Generator "
                "created or advanced inside fn, Python's random, numpy, state kept between calls, or "
                "nondeterministic GPU kernels. Make fn deterministic (pass a fixed generator, call "
                "torch.use_deterministic_algorithms(True), or put the module in eval())."
            )

    # -- many perturbed calls -----------------------------------------------------------------------
    def batched(self, points: dict[int, torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs at a batch of perturbed points: (B, R) for B points, R output rows.

        ``points`` maps a checked-tensor index to a (B, *shape) batch of its values;
        the other checked tensors stay at the check point. fn may write to the batches:
        build fresh ones for every call.
        """
        small = next(iter(points.values())).shape[0] < VMAP_MIN_BATCH
        if self.use_vmap is not False and not small:
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*performance drop.*")
                    return self._vmap(points, rows)
            except Exception as e:  # anything vmap cannot do, the loop does (or raises properly)
                self.use_vmap = False
                self.fallback_reason = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        return self._loop(points, rows)

    def _values(self, points: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        # The base point is shared by every call: hand fn a copy, since fn may write to its arguments.
        return [points[j] if j in points else b.clone() for j, b in enumerate(self.bases)]

    def _vmap(self, points: dict[int, torch.Tensor], rows: torch.Tensor | None) -> torch.Tensor:
        keys = list(points)
        batch = [points[k] for k in keys]
        verify = self.use_vmap is None
        if verify:  # one extra, unperturbed, point to compare with a plain call
            batch = [torch.cat([p, self.bases[k].unsqueeze(0)]) for k, p in zip(keys, batch, strict=True)]

        def g(*ps: torch.Tensor) -> torch.Tensor:
            return self.flat(self._values(dict(zip(keys, ps, strict=True))), rows)

        with forward_only(self.classic):
            out = torch.func.vmap(g, randomness="same")(*batch)
        if verify:
            ref = self.y0 if rows is None else self.y0[rows]
            if not torch.allclose(out[-1], ref, rtol=1e-10, atol=1e-12):
                raise RuntimeError("vmap evaluated fn differently from a plain call")
            self.use_vmap = True
            out = out[:-1]
        return out

    def _loop(self, points: dict[int, torch.Tensor], rows: torch.Tensor | None) -> torch.Tensor:
        n = next(iter(points.values())).shape[0]
        # p[b] is a view into the batch's storage: clone it, so that fn sees a tensor of its own
        # (as_strided and other storage-relative ops would otherwise read the neighbouring points).
        return torch.stack([self.flat(self._values({k: p[b].clone() for k, p in points.items()}), rows)
                            for b in range(n)])
