"""Follows one parameter's gradient from an optimizer update to the next, to tell whether
anything zeroed it in between: a forgotten or misplaced ``zero_grad`` makes every update use the
sum of all gradients since the last zeroing, and PyTorch says nothing.

Version counters make it O(1) per step. At a step's close, after the update, the gradient in
``.grad`` is kept by identity and version, and a one-shot tensor hook is put on the parameter.
That hook runs before each backward adds to the gradient: the chain holds while the tensor is
the same and its version moved only by those additions (an in-place add is one version).
Zeroing breaks it — ``set_to_none`` (a new tensor), ``zero_()`` (a version), ``.data.zero_()``
(no version, hence a content read: free on CPU; on a device read once per watcher, then trusted).
When the optimizer is about to step again, an unbroken chain with at least one addition is the
fault. A backward that never reaches the parameter (a GAN's other loss) adds nothing, and a
gradient zeroed before the next update (that GAN's next ``zero_grad``) breaks the chain.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch


class GradCarry:
    def __init__(self, traceless: Callable[[Callable[[], bool]], bool]):
        # runs a tensor op outside a NaN tracer's dispatch mode; held weakly: the capture owns this
        # object, and a cycle would leave a closed capture to the cyclic collector (memory, RSS)
        self._traceless = weakref.WeakMethod(traceless) if hasattr(traceless, "__self__") else lambda: traceless
        self._p: weakref.ref | None = None
        self._g: weakref.ref | None = None
        self._name = ""
        self._expect = 0
        self._added = False
        self._handle = None
        self._nonzero_on_device: bool | None = None
        self.verdict: str | None = None  # None: not judged; "": zeroed; else the parameter's name

    def keep(self, p: torch.nn.Parameter, name: str) -> None:
        """An update just happened: follow the gradient it used."""
        self.drop()
        g = p.grad
        if g is None:
            return
        self._p, self._g, self._name = weakref.ref(p), weakref.ref(g), name
        self._expect, self._added = g._version, False
        self._handle = p.register_hook(self._before_add)

    def drop(self) -> None:
        self._p = None
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def confirm(self) -> None:
        """An optimizer is about to step: is it given the gradient the last update used plus
        this step's? (``>=``: clipping and unscaling change it in place after the additions.)"""
        if self._p is not None:
            self.verdict = self._name if self._added and self._intact(exact=False) else ""
            self._p = None  # one verdict per update; the hook goes at the next keep()

    def take(self) -> str | None:
        out, self.verdict = self.verdict, None
        return out

    def _before_add(self, grad: torch.Tensor) -> None:
        if self._p is None:
            return
        try:
            if self._intact(exact=True) and self._nonzero():
                self._expect += 1  # the addition that follows, in place
                self._added = True
                return
        except Exception:  # noqa: S110 - never raise into backward: the chain just ends
            pass
        self.verdict = ""
        self._p = None

    def _intact(self, exact: bool) -> bool:
        p, g = self._p(), self._g()
        if p is None or g is None or p.grad is not g:
            return False
        return g._version == self._expect if exact else g._version >= self._expect

    def _nonzero(self) -> bool:
        g = self._g()
        if g.device.type != "cpu" and self._nonzero_on_device is not None:
            return self._nonzero_on_device
        traceless = self._traceless()
        op = lambda: bool(g.detach().ne(0).any())  # noqa: E731
        seen = traceless(op) if traceless is not None else op()
        if g.device.type != "cpu":
            self._nonzero_on_device = seen
        return seen
