"""Let vmap batch classic-style ``autograd.Function``s while evaluating forward values.

Finite differences need forward values only, never autograd. A classic Function
(``forward(ctx, ...)`` without ``setup_context``) refuses to run under vmap, which
would force one call of ``fn`` per perturbed point, and most hand-written Functions
are classic. So while a batch of points is evaluated (under ``torch.no_grad``), the
classic Functions found in ``fn``'s autograd graph get an ``apply`` that calls
``forward`` with a stand-in ctx; the original ``apply`` is put back as soon as the
batch returns, even on error. The first batch is compared with a plain call, so a
Function whose forward needs a real ctx is caught and evaluated one point at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

MAX_GRAPH_NODES = 10_000
"""Autograd nodes visited when looking for classic Functions."""


class _ForwardCtx:
    """Accepts what a forward does with ctx; nothing is kept, since no backward follows."""

    saved_tensors: tuple = ()

    def __init__(self, args: Sequence[Any]) -> None:
        self.needs_input_grad = tuple(isinstance(a, torch.Tensor) and a.requires_grad for a in args)

    def save_for_backward(self, *tensors: Any) -> None:
        pass

    def save_for_forward(self, *tensors: Any) -> None:
        pass

    def mark_dirty(self, *tensors: Any) -> None:
        pass

    def mark_non_differentiable(self, *tensors: Any) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        pass


def _forward_only(cls: type, *args: Any, **kwargs: Any) -> Any:
    return cls.forward(_ForwardCtx(args), *args, **kwargs)


def classic_functions(outputs: Sequence[torch.Tensor]) -> list[type]:
    """Classic-style Function classes in the autograd graph behind ``outputs``."""
    found: dict[type, None] = {}
    seen: set[Any] = set()
    stack = [o.grad_fn for o in outputs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    while stack and len(seen) < MAX_GRAPH_NODES:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        cls = getattr(node, "_forward_cls", None)
        if cls is not None and cls.setup_context is torch.autograd.Function.setup_context:
            found[cls] = None
        stack.extend(nxt for nxt, _ in node.next_functions)
    return list(found)


@contextmanager
def forward_only(classes: Sequence[type]) -> Iterator[None]:
    """Within the block, ``cls.apply`` of each classic class just runs its forward."""
    saved = []
    try:
        for cls in classes:
            saved.append((cls, cls.__dict__.get("apply")))
            cls.apply = classmethod(_forward_only)
        yield
    finally:
        for cls, original in reversed(saved):
            if original is None:
                del cls.apply
            else:
                cls.apply = original
