"""The floating-point outputs of ``fn``, laid end to end as the rows of the Jacobian.

``fn`` may return a tensor, or any nesting of tuples, lists and dicts; integer, bool
and non-tensor leaves (argmax indices, counts, strings) are not differentiable and
are left out. A complex output is checked as (real, imaginary) pairs through
``torch.view_as_real``, which autograd differentiates with its own convention. The layout records names and offsets so that a Jacobian row can be
named as ``out[1][2, 0]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path

from .errors import GradcheckError
from .inputs import describe


def _real(z: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(z.resolve_conj())


class OutputLayout:
    """Names, shapes and flat offsets of the floating-point outputs of one call."""

    def __init__(self, result: Any, fn_name: str) -> None:
        self.fn_name = fn_name
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: list[torch.dtype] = []
        self.has_complex = False
        for path, leaf in tree_flatten_with_path(result)[0]:
            if isinstance(leaf, torch.Tensor) and leaf.is_complex():
                self.has_complex = True
                leaf = _real(leaf)
            if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                self.names.append("out" + keystr(path))
                self.shapes.append(tuple(leaf.shape))
                self.dtypes.append(leaf.dtype)
        if not self.names:
            leaves = tree_flatten(result)[0]
            got = ", ".join(describe(x) for x in leaves[:4]) or describe(result)
            raise GradcheckError(
                f"{fn_name} returned no floating-point tensor (received {got}); there is nothing to "
                "differentiate. Return the tensor(s) whose gradient you want checked; keep them as "
                "torch tensors (.item(), .tolist() and numpy leave autograd)."
            )
        self._single = isinstance(result, torch.Tensor)
        self.numels = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.numels)]).astype(np.int64)
        self.size = int(self.offsets[-1])

    def tensors(self, result: Any) -> list[torch.Tensor]:
        """The floating-point output tensors of ``result``, checked against this layout."""
        outs = [_real(x) if x.is_complex() else x for x in tree_flatten(result)[0]
                if isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())]
        if len(outs) != len(self.shapes) or any(tuple(o.shape) != s for o, s in zip(outs, self.shapes, strict=True)):
            raise GradcheckError(
                f"{self.fn_name} returned outputs of a different structure on a perturbed call "
                f"(expected shapes {self.shapes}, received {[tuple(o.shape) for o in outs]}). "
                "gradcheck needs fn to return the same outputs for nearby inputs; avoid "
                "data-dependent shapes (nonzero, masked_select, unique) in fn."
            )
        return outs

    def flat(self, result: Any) -> torch.Tensor:
        """All floating outputs as one float64 vector (works under vmap)."""
        if self._single and isinstance(result, torch.Tensor) and result.shape == self.shapes[0]:
            return (_real(result) if result.is_complex() else result).reshape(-1).to(torch.float64)  # hot loop
        outs = [o.reshape(-1).to(torch.float64) for o in self.tensors(result)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def locate(self, row: int) -> str:
        """Name the output element of flat row ``row``, e.g. ``out[1][2, 0]``."""
        k = int(np.searchsorted(self.offsets, row, side="right") - 1)
        idx = np.unravel_index(row - int(self.offsets[k]), self.shapes[k]) if self.shapes[k] else ()
        return f"{self.names[k]}[{', '.join(str(int(i)) for i in idx)}]" if idx else self.names[k]
