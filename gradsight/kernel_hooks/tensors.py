"""Find the floating-point tensors inside whatever a module returns.

Modules return tensors, tuples, lists, dicts, dataclasses and Hugging Face
``ModelOutput`` objects (an ``OrderedDict`` subclass); all are walked, with a depth
limit so that self-referencing containers cannot hang a hook.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import torch

_MAX_DEPTH = 6


def float_tensors(obj: object, depth: int = 0) -> Iterator[torch.Tensor]:
    """Yield every floating-point tensor reachable from ``obj``."""
    if type(obj) is tuple and all(type(o) is torch.Tensor for o in obj):  # the common case, fast
        for t in obj:
            if t.is_floating_point():
                yield t
        return
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield obj
        return
    if depth >= _MAX_DEPTH or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return
    if isinstance(obj, Mapping):
        for value in obj.values():
            yield from float_tensors(value, depth + 1)
    elif isinstance(obj, (tuple, list)):
        for value in obj:
            yield from float_tensors(value, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            yield from float_tensors(getattr(obj, field.name, None), depth + 1)


def tensor_key(t: torch.Tensor) -> tuple[int, int]:
    """Identity of a tensor *value*: an in-place op (``ReLU(inplace=True)``) bumps the version."""
    return (id(t), t._version)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a sharded DTensor parameter or gradient (FSDP2, tensor parallel), a
    plain tensor otherwise: statistics are local, ``gradsight.distributed`` sums shards' squares
    across ranks; a DTensor op here would start a hidden collective every step."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None and hasattr(t, "placements") else t


_COMPRESSED = (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)


def grad_values(t: torch.Tensor) -> torch.Tensor:
    """The values whose squares sum to ``||t||^2``: this rank's shard (:func:`local_tensor`) and,
    for a sparse gradient (``nn.Embedding(sparse=True)``, ``EmbeddingBag``), its stored values —
    torch has no norm of a sparse layout, and a COO gradient repeats the indices a batch saw
    twice, whose values add up, so it is coalesced (into a new tensor; ``p.grad`` is untouched)."""
    t = local_tensor(t)
    layout = t.layout
    if layout is torch.strided:
        return t
    if layout is torch.sparse_coo:
        return t.coalesce().values()
    if layout in _COMPRESSED:
        return t.values()
    return t

