"""The sampling bound on captured layer inputs: what the capture keeps for a later in-model
gradient check (``w.gradcheck(layer)``), cut to a few samples and a bounded size.

Lives with the capture, which calls it inside forward hooks; the checker
(:mod:`gradsight.gradcheck.in_model`) imports it from here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

MAX_SAMPLES = 4
"""Samples along dim 0 of the captured inputs that the in-model check uses."""

MAX_CAPTURE_ELEMENTS = 2**20
"""Most tensor elements one capture keeps (4 MiB in float32, 8 MiB as the float64 copies)."""

MAX_KEPT_TOTAL = 2**23
"""Most elements a watcher keeps per step over all layers (32 MiB in float32), spent in the
order layers finish their forward: without it a GPT-2-sized model kept ~0.5 GB of layer
inputs on the device (165 layers x up to 4 MiB), on top of its activations."""

def _batch_size(args: tuple, kwargs: dict) -> int | None:
    for leaf in tree_flatten((args, kwargs))[0]:
        if isinstance(leaf, torch.Tensor) and leaf.dim() >= 1:
            return int(leaf.shape[0])
    return None


def plan(args: tuple, kwargs: dict | None = None, max_samples: int = MAX_SAMPLES,
         max_elements: int = MAX_CAPTURE_ELEMENTS) -> tuple[int | None, int]:
    """(samples kept along dim 0 — None when no tensor has a batch dimension —, elements
    kept): as many samples as fit ``max_elements``, at least one."""
    kwargs = dict(kwargs or {})
    batch = _batch_size(tuple(args), kwargs)
    # one tensor passed several times (self-attention's q, k, v) is kept once (slice_batch(share=True))
    tensors = list({id(t): t for t in tree_flatten((tuple(args), kwargs))[0] if isinstance(t, torch.Tensor)}.values())

    def size(keep: int) -> int:
        return sum(t[:keep].numel() if batch is not None and t.dim() and t.shape[0] == batch else t.numel()
                   for t in tensors)

    if batch is None:
        return None, size(0)
    keep = min(batch, max_samples)
    while keep > 1 and size(keep) > max_elements:
        keep -= 1
    return keep, size(keep)


def slice_batch(args: tuple, kwargs: dict | None = None, max_samples: int = MAX_SAMPLES,
                keep: int | None = None, share: bool = False) -> tuple[tuple, dict]:
    """Detached copies of ``(args, kwargs)`` cut to the first few samples along dim 0.

    The batch size is dim 0 of the first tensor argument; every tensor with that
    leading size is sliced, others (masks, lookup tables) are copied whole. Fewer than
    ``max_samples`` samples are kept when needed to stay within ``MAX_CAPTURE_ELEMENTS``.
    Non-tensor arguments are passed through as they are. ``share``: a tensor passed
    several times gets one copy (the capture's, to copy self-attention's input once, not
    three times); the checker asks for separate copies, one independent input each.
    """
    kwargs = dict(kwargs or {})
    if not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples must be an int >= 1, received {max_samples!r}.")
    batch = _batch_size(tuple(args), kwargs)
    if keep is None:  # ``keep`` from :func:`plan`, when the caller already planned
        keep = plan(args, kwargs, max_samples)[0]

    copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def cut(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        hit = copies.get(id(x)) if share else None
        if hit is not None and hit[0] is x:  # one tensor passed several times (self-attention's q, k, v)
            return hit[1]
        y = x.detach()
        if batch is not None and y.dim() >= 1 and y.shape[0] == batch:
            y = y[:keep]
        copies[id(x)] = (x, y := y.clone())
        return y

    return tree_map(cut, tuple(args)), tree_map(cut, kwargs)
