"""Bytes each module's forward saves for backward: what decides whether backward fits in
memory (out-of-memory in backward is the most common way a large run dies).

A ``saved_tensors_hooks`` pack hook sees every tensor autograd saves during the forward.
It counts the bytes of the tensor's storage once per storage (two ops saving views of one
activation hold it once), skips parameters (they live anyway), and returns the tensor
itself: nothing is copied and no reference is kept beyond what autograd keeps anyway.
Bytes are charged to the innermost module running (its own code, not its children's):
forward pre-hooks on the submodules keep a stack, placed for the detail step's forward
only and removed at its end. Hooks the user pushed before (activation offloading, ...)
are chained, not replaced, so saving behaves exactly as without gradsight.

Active on detail steps only, between the root module's forward pre-hook and its forward hook.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from .filters import hookable
from .tensors import local_tensor

_autograd = torch._C._autograd


class SavedBytes:
    def __init__(self, n_layers: int):
        self.n = n_layers
        self.bytes = np.zeros(n_layers)
        self.measured = False
        self._stack: list[int] = []
        self._storages: set[int] = set()
        self._params: set[int] = set()
        self._outer = None
        self._pushed = False
        self._handles: list = []

    def begin(self, modules: Iterable[torch.nn.Module], params: Iterable[torch.Tensor]) -> None:
        """At the root forward pre-hook of a detail step: start counting (no-op if already
        counting or if saved-tensor hooks are disabled in this context). ``modules``: every
        watched module in model order, the root first."""
        if self._pushed or not _autograd._saved_tensors_hooks_is_enabled():
            return
        self._params = {local_tensor(p).untyped_storage().data_ptr() for p in params}
        self._stack = [0]
        for i, m in enumerate(modules):
            if i and m is not None and hookable(m):  # not the root (its pre-hooks run now), not TorchScript
                self._handles.append(m.register_forward_pre_hook(self._make_enter(i)))
        self._outer = _autograd._top_saved_tensors_default_hooks(False)
        _autograd._push_saved_tensors_default_hooks(self._pack, self._unpack)
        self._pushed = True
        self.measured = True

    def _make_enter(self, i: int):
        def enter(module, args):
            self._stack.append(i)

        return enter

    def finish(self, i: int) -> None:
        """``i``'s forward returned (its forward hook): leave it."""
        if len(self._stack) > 1 and i in self._stack:  # empty outside detail forwards: one check
            while len(self._stack) > 1 and self._stack.pop() != i:
                pass

    def end(self) -> None:
        """At the root forward hook (and again at harvest, in case a forward raised): stop
        counting. Pops only its own saved-tensor hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if not self._pushed:
            return
        top = _autograd._top_saved_tensors_default_hooks(False)
        if top is not None and getattr(top[0], "__self__", None) is self:
            _autograd._pop_saved_tensors_default_hooks()
            self._pushed = False

    def take(self) -> np.ndarray:
        """Per-layer bytes of this step (NaN if not measured), and reset."""
        self.end()
        out = self.bytes.copy() if self.measured else np.full(self.n, np.nan)
        self.bytes[:] = 0.0
        self._stack = []
        self._storages.clear()
        self._params = set()
        self.measured = False
        return out

    def _pack(self, t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in self._storages and ptr not in self._params and self._stack:
                self._storages.add(ptr)
                self.bytes[self._stack[-1]] += storage.nbytes()
        except Exception:  # noqa: S110 - a tensor without storage (meta, sparse): nothing to count
            pass
        return self._outer[0](t) if self._outer is not None else t

    def _unpack(self, packed):
        return self._outer[1](packed) if self._outer is not None else packed
