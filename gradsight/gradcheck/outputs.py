"""The outputs of ``fn``: each one classified, the compared ones laid end to end as Jacobian rows.

``fn`` may return a tensor, or any nesting of tuples, lists and dicts. Every leaf gets a
kind, by the rules ``torch.autograd.gradcheck`` applies:

- ``differentiable``: a floating-point (or complex) tensor that requires grad when the
  checked inputs do. Only these are compared.
- ``not differentiable``: a floating-point tensor that does not require grad although
  the inputs do: marked with ``ctx.mark_non_differentiable`` in an ``autograd.Function``,
  declared so by the op (``native_layer_norm``'s mean and rstd), or computed under
  ``torch.no_grad``/``.detach()``. Backward gives it no gradient by design, so comparing
  it would fail a correct function. When *no* output is differentiable, torch requires
  the numeric derivative of every output to be zero; so does gradsight, by comparing
  them all against backward's zero (a wrongly detached result then fails, as it should).
- ``integer``: integer and bool tensors (indices, counts, info codes): never differentiable.
- ``auxiliary``: anything that is not a tensor (numbers, strings, None): passed over.

A complex output is compared as (real, imaginary) pairs through ``torch.view_as_real``,
which autograd differentiates with its own convention. The layout records names and
offsets so that a Jacobian row can be named as ``out[1][2, 0]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path

from .errors import GradcheckError
from .inputs import describe

DIFFERENTIABLE = "differentiable"
NOT_DIFFERENTIABLE = "not differentiable"
INTEGER = "integer"
AUXILIARY = "auxiliary"


def _real(z: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(z.resolve_conj())


def _floating(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())


@dataclass
class OutputInfo:
    """One output of ``fn``, as the report lists it."""

    name: str  # "out", "out[1]", "out['mean']"
    kind: str  # DIFFERENTIABLE | NOT_DIFFERENTIABLE | INTEGER | AUXILIARY
    shape: tuple[int, ...] | None  # None for non-tensors
    dtype: str  # "float64", "int64", or the Python type name
    compared: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "compared": self.compared, "dtype": self.dtype,
                "shape": None if self.shape is None else [int(s) for s in self.shape]}


class OutputLayout:
    """Every output's kind, and the names, shapes and flat offsets of the compared ones.

    ``result`` must come from a call with grad enabled on inputs that require grad,
    since the kinds are read from the outputs' ``requires_grad``.
    """

    def __init__(self, result: Any, fn_name: str) -> None:
        self.fn_name = fn_name
        self.outputs: list[OutputInfo] = []
        floating: list[tuple[int, torch.Tensor]] = []  # (position among floating leaves, tensor)
        leaves = tree_flatten_with_path(result)[0]
        n_float = 0
        for path, leaf in leaves:
            name = "out" + keystr(path)
            if _floating(leaf):
                kind = DIFFERENTIABLE if leaf.requires_grad else NOT_DIFFERENTIABLE
                floating.append((n_float, leaf))
                n_float += 1
            elif isinstance(leaf, torch.Tensor):
                kind = INTEGER
            else:
                kind = AUXILIARY
            shape = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else None
            dtype = str(leaf.dtype).replace("torch.", "") if isinstance(leaf, torch.Tensor) else type(leaf).__name__
            self.outputs.append(OutputInfo(name, kind, shape, dtype, compared=False))
        if not floating:
            got = ", ".join(describe(x) for _, x in leaves[:4]) or describe(result)
            raise GradcheckError(
                f"{fn_name} returned no floating-point tensor (received {got}); there is nothing to "
                "differentiate. Return the tensor(s) whose gradient you want checked; keep them as "
                "torch tensors (.item(), .tolist() and numpy leave autograd)."
            )
        float_infos = [o for o in self.outputs if o.kind in (DIFFERENTIABLE, NOT_DIFFERENTIABLE)]
        any_diff = any(o.kind == DIFFERENTIABLE for o in float_infos)
        # torch's rule: the differentiable outputs; if there is none, all of them (numeric must be 0).
        self.compared = [j for j, o in enumerate(float_infos) if o.kind == DIFFERENTIABLE or not any_diff]
        for j in self.compared:
            float_infos[j].compared = True
        self.n_floating = n_float
        self.float_shapes = [tuple(t.shape) for _, t in floating]
        self.no_differentiable = not any_diff
        kept = [floating[j][1] for j in self.compared]
        self.names = [float_infos[j].name for j in self.compared]
        self.has_complex = any(t.is_complex() for t in kept)
        kept = [_real(t) if t.is_complex() else t for t in kept]
        self.shapes = [tuple(t.shape) for t in kept]
        self.dtypes = [t.dtype for t in kept]
        self._single = isinstance(result, torch.Tensor)
        self.numels = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.numels)]).astype(np.int64)
        self.size = int(self.offsets[-1])

    def tensors(self, result: Any) -> list[torch.Tensor]:
        """The compared output tensors of ``result`` (complex ones as real pairs)."""
        outs = [x for x in tree_flatten(result)[0] if _floating(x)]
        if len(outs) != self.n_floating or any(
                tuple(o.shape) != s for o, s in zip(outs, self.float_shapes, strict=True)):
            raise GradcheckError(
                f"{self.fn_name} returned outputs of a different structure on a perturbed call "
                f"(expected shapes {self.float_shapes}, received {[tuple(o.shape) for o in outs]}). "
                "gradcheck needs fn to return the same outputs for nearby inputs; avoid "
                "data-dependent shapes (nonzero, masked_select, unique) in fn."
            )
        return [_real(outs[j]) if outs[j].is_complex() else outs[j] for j in self.compared]

    def flat(self, result: Any) -> torch.Tensor:
        """All compared outputs as one float64 vector (works under vmap)."""
        if self._single and isinstance(result, torch.Tensor) and result.shape == self.shapes[0]:
            return result.reshape(-1).to(torch.float64)  # hot loop: one real tensor
        outs = [o.reshape(-1).to(torch.float64) for o in self.tensors(result)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def output_of(self, row: int) -> str:
        """The name of the compared output that flat row ``row`` belongs to."""
        return self.names[int(np.searchsorted(self.offsets, row, side="right") - 1)]

    def locate(self, row: int) -> str:
        """Name the output element of flat row ``row``, e.g. ``out[1][2, 0]``."""
        k = int(np.searchsorted(self.offsets, row, side="right") - 1)
        idx = np.unravel_index(row - int(self.offsets[k]), self.shapes[k]) if self.shapes[k] else ()
        return f"{self.names[k]}[{', '.join(str(int(i)) for i in idx)}]" if idx else self.names[k]
