"""Which modules a watcher hooks: ``gs.watch(model, include=..., exclude=...)``.

Patterns are shell globs (``fnmatch``) matched against a module's qualified name (as in
``model.named_modules()``) and its class name, so ``include="encoder.*"`` and
``exclude="Dropout"`` both work. A module is selected when it or one of its ancestors matches
``include`` (a pattern naming a block watches the whole block) and neither it nor an ancestor
matches ``exclude``. The root module is always watched: it marks where a training step's
forward starts and carries the model's own output gradient. Unselected modules get no hooks
at all, and their parameters are not watched, so they cost nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from fnmatch import fnmatchcase

import torch
from torch import nn


def _patterns(value, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable):
        pats = tuple(value)
        if all(isinstance(p, str) for p in pats):
            return pats
    raise TypeError(f"gradsight.watch: {what}= takes a glob pattern or a list of them (matched against "
                    f"qualified module names and module class names, e.g. 'encoder.*' or 'Linear'); "
                    f"got {value!r}.")


def _matches(name: str, module: nn.Module, pats: tuple[str, ...]) -> bool:
    kind = type(module).__name__
    return any(fnmatchcase(name, p) or fnmatchcase(kind, p) for p in pats)


def select_modules(model: nn.Module, include=None, exclude=None) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs to watch, in ``named_modules()`` order, root first."""
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    if not hookable(model):
        raise TypeError(f"gradsight.watch: {type(model).__name__} is a TorchScript module, which takes no Python "
                        "hooks. Watch the nn.Module before torch.jit.script (debug it uncompiled), or use "
                        "torch.compile, whose models are watched through their parameters.")
    opaque = [n + "." for n, _ in scripted(model)]  # kept as rows (their parameters), not their insides
    named = [(n, m) for n, m in model.named_modules() if not any(n.startswith(o) for o in opaque)]
    if inc is None and exc is None:
        return named
    picked_by: dict[str, bool] = {}   # name -> included (by itself or an ancestor)
    dropped_by: dict[str, bool] = {}  # name -> excluded (by itself or an ancestor)
    selected = [named[0]]
    for name, m in named[1:]:
        parent = name.rpartition(".")[0]
        picked_by[name] = inc is None or picked_by.get(parent, False) or _matches(name, m, inc)
        dropped_by[name] = exc is not None and (dropped_by.get(parent, False) or _matches(name, m, exc))
        if picked_by[name] and not dropped_by[name]:
            selected.append((name, m))
    if inc is not None and len(selected) == 1:
        names = [n for n, _ in named[1:]]
        close = sorted({c for p in inc for c in difflib.get_close_matches(p, names, n=3)})
        hint = f" Close names: {', '.join(map(repr, close))}." if close else ""
        raise ValueError(f"gradsight.watch: include={list(inc)!r} matched no module of {type(model).__name__} "
                         f"(patterns are globs on qualified names such as 'encoder.layer.0' or class names "
                         f"such as 'Linear').{hint} See [n for n, _ in model.named_modules()].")
    return selected


def hookable(m: nn.Module) -> bool:
    """TorchScript modules take no Python hooks (torch raises)."""
    return not isinstance(m, torch.jit.ScriptModule)


def scripted(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost TorchScript submodules: rows that own all their parameters (norms, gradients,
    updates), with no activation or gradient statistics of their own — their outputs are part of
    their parent's."""
    out: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if name and not hookable(m) and not any(name.startswith(s + ".") for s, _ in out):
            out.append((name, m))
    return out
