"""Which tensors a check perturbs, and the float64 copies it perturbs them on.

The rule (from the contract): if any input tensor requires grad, exactly those are
checked; otherwise every floating-point input; plus, when ``fn`` is an ``nn.Module``,
its parameters that require grad. Everything floating-point (inputs, parameters,
buffers) is copied to float64 so that central differences are precise and dtypes
mix cleanly; integer and bool tensors and non-tensor arguments pass through. The
user's tensors and module are never written to: every call gets fresh copies.
"""

from __future__ import annotations

import copy
import inspect
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import keystr, tree_flatten_with_path, tree_unflatten

from .errors import GradcheckError


@dataclass
class Slot:
    """One checked tensor: its report name and the float64 point the check is made at."""

    name: str
    kind: str  # "input" or "parameter"
    shape: tuple[int, ...]
    dtype: torch.dtype  # the user's dtype, for the report
    value: torch.Tensor  # detached float64 copy; never handed to fn itself (fn may write in place)
    key: int | str  # flat leaf position (inputs) or qualified name (parameters)

    @property
    def numel(self) -> int:
        return self.value.numel()


def describe(x: Any) -> str:
    """A short description of a received value for error messages."""
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)} on {x.device}"
    return type(x).__name__


def _callable_name(fn: Callable) -> str:
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
        return f"{owner.__name__}.apply"
    if isinstance(fn, torch.nn.Module):
        return type(fn).__name__
    if isinstance(fn, types.BuiltinFunctionType) and getattr(fn, "__module__", None):
        return f"{fn.__module__}.{fn.__name__}"  # torch.sin, not _VariableFunctionsClass.sin
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _signature(fn: Callable) -> inspect.Signature | None:
    """The signature whose parameter names label the inputs (forward's for Functions and modules)."""
    owner = getattr(fn, "__self__", None)
    try:
        if isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
            sig = inspect.signature(owner.forward)
            params = list(sig.parameters.values())
            # Classic Functions take ctx first; setup_context-style ones do not.
            if owner.setup_context is torch.autograd.Function.setup_context and params:
                params = params[1:]
            return sig.replace(parameters=params)
        if isinstance(fn, torch.nn.Module):
            return inspect.signature(fn.forward)
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _positional_names(fn: Callable, n: int) -> list[str]:
    sig = _signature(fn)
    names: list[str] = []
    params = list(sig.parameters.values()) if sig is not None else []
    var = None
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and len(names) < n:
            names.append(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            var = p.name
    if sig is None and n == 1:
        return ["input"]  # builtins such as torch.sin have no signature; torch's docs call it input
    if var is not None or sig is None:
        base = var if var is not None and var != "args" else "input"
        names += [f"{base}{i}" for i in range(len(names), n)]
    names += [f"input{i}" for i in range(len(names), n)]  # more args than the signature takes: fn will say so
    return names[:n]


class CallSpec:
    """How to call ``fn`` with the checked tensors replaced by given float64 values."""

    def __init__(self, fn: Callable, args: Sequence[Any], kwargs: dict[str, Any] | None) -> None:
        if not callable(fn):
            raise GradcheckError(
                f"gradcheck expected a callable or an nn.Module as fn, received {describe(fn)}. "
                "Pass the function itself, e.g. gs.gradcheck(torch.sin, x) or gs.gradcheck(MyFn.apply, x)."
            )
        if kwargs is not None and not isinstance(kwargs, dict):
            raise GradcheckError(f"kwargs must be a dict of keyword arguments for fn, received {describe(kwargs)}.")
        self.fn = fn
        self.name = _callable_name(fn)
        owner = getattr(fn, "__self__", None)
        # fn = SomeFunction.apply is bound once; look apply up per call so classic.forward_only applies.
        self._apply_cls = owner if isinstance(owner, type) and issubclass(owner, torch.autograd.Function) \
            and getattr(fn, "__name__", "") == "apply" else None
        self.module = fn if isinstance(fn, torch.nn.Module) else None
        args, kwargs = tuple(args), dict(kwargs or {})

        with_path, self._spec = tree_flatten_with_path((args, kwargs))
        # Every argument is itself a leaf (no tuples, lists, dicts, None): calls can skip the pytree.
        self._flat = not kwargs and len(with_path) == len(args) and all(len(p) == 2 for p, _ in with_path)
        pos_names = _positional_names(fn, len(args))
        self._leaves: list[Any] = []
        tensors: list[tuple[int, str, torch.Tensor]] = []
        for i, (path, leaf) in enumerate(with_path):
            top = pos_names[path[1].idx] if path[0].idx == 0 else str(path[1].key)
            name = top + keystr(path[2:])
            if isinstance(leaf, torch.Tensor):
                self._check_layout(leaf, name)
                tensors.append((i, name, leaf))
            self._leaves.append(leaf)
        # Objects fn may mutate (a key/value cache, a dict of state): every call gets its own copy,
        # so that calls do not see each other's updates and the user's object is left as it was.
        self._mutable = [i for i, leaf in enumerate(self._leaves) if not isinstance(leaf, (torch.Tensor, *_IMMUTABLE))]

        if any(t.requires_grad for _, _, t in tensors):
            chosen = [(i, n, t) for i, n, t in tensors if t.requires_grad]
        else:
            chosen = [(i, n, t) for i, n, t in tensors if t.is_floating_point()]  # complex: passed through
        chosen_ids = {i for i, _, _ in chosen}

        self.checked: list[Slot] = []
        self._const: dict[int, torch.Tensor] = {}  # unchecked tensor leaves, float64 where floating
        for i, name, t in tensors:
            if i in chosen_ids:
                self.checked.append(self._slot(name, "input", t, i))
            else:
                self._const[i] = _copy(t)
            self._leaves[i] = None  # drop the user's tensor: the spec must not keep it alive
        self.n_inputs = len(self.checked)

        self._params: dict[str, torch.Tensor] = {}
        self._buffers: dict[str, torch.Tensor] = {}
        if self.module is not None:
            used = {s.name for s in self.checked}
            for qname, p in self.module.named_parameters():
                if p.requires_grad:
                    self._check_layout(p, qname)
                    shown = qname if qname not in used else f"{qname} (parameter)"
                    self.checked.append(self._slot(shown, "parameter", p, qname))
                else:
                    self._params[qname] = _copy(p)
            for qname, b in self.module.named_buffers():
                self._buffers[qname] = _copy(b)

        if not self.checked:
            got = ", ".join(describe(x) for x in args) or "no inputs"
            raise GradcheckError(
                f"nothing to check in {self.name}: received {got}"
                + (" and a module with no parameter that requires grad" if self.module is not None else "")
                + ". Expected at least one floating-point tensor input (or a module parameter with "
                "requires_grad=True). Integer, bool and complex tensors are passed through, never "
                "perturbed; pass a float tensor, e.g. x.double()"
                + (", and a complex one as its real and imaginary parts (torch.complex(re, im) inside fn)."
                   if any(t.is_complex() for _, _, t in tensors) else ".")
            )
        self.devices = sorted(
            {s.value.device.index or 0 for s in self.checked if s.value.device.type == "cuda"}
            | {t.device.index or 0 for t in self._const.values() if t.device.type == "cuda"}
            | {t.device.index or 0 for t in self._buffers.values() if t.device.type == "cuda"}
        )

    @staticmethod
    def _check_layout(t: torch.Tensor, name: str) -> None:
        if t.layout != torch.strided:
            raise GradcheckError(
                f"'{name}' is a {t.layout} tensor; gradcheck checks dense (strided) tensors only. "
                "Pass t.to_dense() and convert back inside fn if it needs the sparse layout."
            )
        if t.device.type == "meta":
            raise GradcheckError(f"'{name}' is on the meta device and holds no values; pass a real tensor.")
        if _overlaps(t):
            zero = [d for d, (st, sz) in enumerate(zip(t.stride(), t.shape, strict=True)) if st == 0 and sz > 1]
            how = (f"expanded (stride 0 in dim {', '.join(map(str, zero))})" if zero
                   else f"a view whose elements overlap in memory (strides {t.stride()}, shape {tuple(t.shape)})")
            raise GradcheckError(
                f"'{name}' is {how}: several of its elements are one value in memory, so perturbing one "
                "element perturbs the others and its gradient is ambiguous (torch.autograd.gradcheck "
                "refuses such inputs too). To check each element on its own, pass x.contiguous(); to "
                "check the gradient of the shared values, pass the tensor before expand/as_strided and "
                "apply that inside fn."
            )

    @staticmethod
    def _slot(name: str, kind: str, t: torch.Tensor, key: int | str) -> Slot:
        if t.is_complex():
            raise GradcheckError(
                f"'{name}' is a complex tensor ({t.dtype}); gradsight's checker handles real tensors. "
                "Check the real and imaginary parts as two real inputs and combine them inside fn "
                "(torch.complex(re, im)), or use torch.autograd.gradcheck for Wirtinger derivatives."
            )
        if not t.is_floating_point():
            raise GradcheckError(f"'{name}' is {t.dtype}; only floating-point tensors can be perturbed.")
        value = t.detach().to(torch.float64, copy=True)
        return Slot(name=name, kind=kind, shape=tuple(t.shape), dtype=t.dtype, value=value, key=key)

    def call(self, values: Sequence[torch.Tensor]) -> Any:
        """Call fn with ``values`` (aligned with ``self.checked``) in place of the checked tensors.

        Unchecked tensors are cloned on every call so that an fn which writes to its
        arguments (or a BatchNorm updating running stats) sees the same state each time.
        """
        leaves = list(self._leaves)
        for i in self._mutable:
            leaves[i] = state_copy(self._leaves[i])
        for i, t in self._const.items():
            leaves[i] = t.clone()
        for slot, v in zip(self.checked[: self.n_inputs], values[: self.n_inputs], strict=True):
            leaves[slot.key] = v
        fn = self.fn if self._apply_cls is None else self._apply_cls.apply
        if self.module is None and self._flat:  # plain positional arguments: skip the pytree (hot loop)
            return fn(*leaves)
        args, kwargs = tree_unflatten(leaves, self._spec)
        if self.module is None:
            return fn(*args, **kwargs)
        state = {k: v.clone() for k, v in self._buffers.items()}
        state.update(self._params)
        for slot, v in zip(self.checked[self.n_inputs :], values[self.n_inputs :], strict=True):
            state[slot.key] = v
        return torch.func.functional_call(self.module, state, tuple(args), kwargs)


_IMMUTABLE = (int, float, bool, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size, range,
              slice, type(Ellipsis), types.FunctionType, types.BuiltinFunctionType, type)


def state_copy(x: Any, depth: int = 0) -> Any:
    """A copy of a mutable argument with every tensor in it detached and cloned.

    ``copy.deepcopy`` refuses tensors with autograd history, which is what a key/value cache
    captured in training holds; those are constants for the check. Objects that cannot be
    copied (locks, files, modules) are shared as they are.
    """
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (*_IMMUTABLE, torch.nn.Module)) or depth > 8:
        return x
    if isinstance(x, (list, tuple, set)):
        items = [state_copy(v, depth + 1) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
    if isinstance(x, dict):
        out = copy.copy(x)
        for k, v in x.items():
            out[k] = state_copy(v, depth + 1)
        return out
    try:
        out = copy.copy(x)
    except Exception:
        return x
    if hasattr(out, "__dict__") and out is not x:
        for k, v in vars(x).items():
            out.__dict__[k] = state_copy(v, depth + 1)
    return out


def _overlaps(t: torch.Tensor) -> bool:
    """Whether two elements of ``t`` share memory (stride 0, or an overlapping as_strided view)."""
    if t.numel() < 2:
        return False
    verdict = torch._debug_has_internal_overlap(t)  # 0: no, 1: yes, 2: too hard to tell cheaply
    if verdict != 2:
        return verdict == 1
    offsets = torch.zeros((), dtype=torch.int64)
    for st, sz in zip(t.stride(), t.shape, strict=True):
        offsets = (offsets.unsqueeze(-1) + st * torch.arange(sz)).reshape(-1)
    return int(offsets.unique().numel()) < t.numel()


def _copy(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.is_floating_point():
        return t.to(torch.float64, copy=True)
    if t.is_complex():
        return t.to(torch.complex128, copy=True)
    return t.clone()
