"""Noticing that the watched model changed, at O(1) cost per training step.

A notebook edits a model while it is watched: ``m[2].weight = nn.Parameter(...)``,
``model.add_module(...)``, ``del model[1]``. Walking the model every step to compare would
cost per-module Python work on every step; instead torch tells us:

- parameter and submodule (re)assignments: torch's global registration hooks, filtered by
  the identity of the watched modules (one set lookup per registration anywhere);
- a watched module or parameter freed (removed and dropped): a weak-reference callback;
- a module removed while the user still holds it: :meth:`ModelChanges.check` compares the
  identities of the modules and parameters, run by the watcher only on detail steps.

The hooks hold this object only weakly, and it holds nothing of the watcher: no cycles.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules import module as _module


def _flagger(ref: weakref.ref, why: Callable[..., str | None]) -> Callable:
    def flag(*args):
        me = ref()
        if me is not None and me.reason is None:
            reason = why(*args)
            if reason is not None:
                me.reason = reason

    return flag


class ModelChanges:
    """Watches one model's structure. ``reason`` is None until something changed."""

    def __init__(self, model: nn.Module, modules: list[nn.Module], params: list[torch.Tensor]):
        self.reason: str | None = None
        self._module_ids = {id(m) for m in modules}
        self._signature = self._of(model)
        me = weakref.ref(self)
        names = {id(m): n for n, m in model.named_modules()}

        def assigned(kind: str):
            def why(module, name, value):
                if id(module) not in self_ids():
                    return None
                current = (module._parameters if kind == "parameter" else module._modules).get(name)
                if current is value:
                    return None
                owner = names.get(id(module), "?")
                where = f"{owner}.{name}" if owner else name
                return f"{kind} {where!r} was {'replaced' if current is not None else 'added'}"
            return why

        def self_ids():
            m = me()
            return m._module_ids if m is not None else ()

        self._handles = [
            _module.register_module_parameter_registration_hook(_flagger(me, assigned("parameter"))),
            _module.register_module_module_registration_hook(_flagger(me, assigned("module"))),
        ]
        gone = _flagger(me, lambda _: "a watched module or parameter was deleted")
        self._refs = [weakref.ref(x, gone) for x in (*modules, *params)]

    @staticmethod
    def _of(model: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(map(id, model.modules())), tuple(map(id, model.parameters()))

    def check(self, model: nn.Module) -> str | None:
        """The full comparison (O(modules)): what the cheap signals cannot see, such as a
        module removed from the model while the user still holds it."""
        if self.reason is None:
            now = self._of(model)
            if now[0] != self._signature[0]:
                self.reason = "a module was added or removed"
            elif now[1] != self._signature[1]:
                self.reason = "the parameters changed"
        return self.reason

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._refs.clear()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.remove()
