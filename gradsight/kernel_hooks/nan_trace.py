"""The exact NaN mode (``gs.watch(model, nan_trace="op")``): the aten op and the source
line where the first NaN or Inf of a step appears, forward or backward.

How: a ``TorchDispatchMode`` sees every aten op, the backward ones included. After
each op it takes one float sum of each floating-point output — a NaN or Inf anywhere
makes the sum non-finite — and only on that rare path looks closer (exact
``isfinite`` to rule out an overflowing sum, then the inputs, to tell an origin from
propagation). Which module ran the op comes from a module stack kept by forward
pre/post hooks; which module and source line a *backward* op belongs to comes from
the autograd node that runs it (``torch._C._current_autograd_node()``): when a forward
op creates a node, its sequence number is filed with the module, the op name and the
user's source line, so the backward event names the op, module and line of the forward
call whose gradient failed — what ``torch.autograd.detect_anomaly`` does with a full
traceback per node, for much less (see benchmarks/nan_trace.py).

The mode is pushed at the first forward of a step (so the loss computation and the
backward that follow run inside it) and popped when the watcher closes the step.
Checks are skipped for ops that run with gradients disabled outside backward
(optimizer steps, evaluation), so only training forwards and backwards pay for it.
On an accelerator each check reads one scalar: this mode synchronises per op, which is
why it is opt-in.
"""

from __future__ import annotations

import math
import os
import sys
import sysconfig
import weakref
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch._C._autograd import _get_sequence_nr
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

MAX_EVENTS = 16          # per step: the first ones are what matters
MAX_NODE_INFO = 1 << 16  # forward ops remembered per step (bounded even for huge graphs)

_GRADSIGHT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_SKIP_DIRS = (os.path.dirname(torch.__file__) + os.sep, _GRADSIGHT_DIR)
_STDLIB = sysconfig.get_paths().get("stdlib", "\0")


@dataclass(frozen=True)
class NanEvent:
    """An op whose output holds NaN/Inf while its inputs were finite (or, in backward,
    the first op of the step with a non-finite output)."""

    phase: str          # "forward" | "backward"
    op: str             # the aten op that produced it, e.g. "aten::log"
    source: str         # "file:line" of the user's code ("" when unknown)
    layer: str          # qualified module name ("" = the root, or outside the model)
    in_model: bool      # False: the op ran outside any watched module (e.g. the loss)
    what: str           # "nan", "+inf", "-inf" or a mix like "nan,+inf"
    node: str = ""      # backward only: the autograd node, e.g. "SqrtBackward0"
    forward_op: str = ""  # backward only: the forward op whose gradient this is

    def as_dict(self) -> dict:
        return asdict(self)


def _op_name(func) -> str:
    name = getattr(func, "_schema", None)
    name = name.name if name is not None else str(func)
    return name if "::" in name else f"aten::{name}"


class _SourceFinder:
    """First stack frame outside torch, gradsight and the standard library, cached per code object."""

    def __init__(self):
        self._internal: dict = {}

    def __call__(self, frame) -> tuple[str, int] | None:
        internal = self._internal
        while frame is not None:
            code = frame.f_code
            flag = internal.get(code)
            if flag is None:
                fn = code.co_filename
                flag = fn.startswith(_SKIP_DIRS) or fn.startswith(_STDLIB) or fn.startswith("<")
                internal[code] = flag
            if not flag:
                return code.co_filename, frame.f_lineno
            frame = frame.f_back
        return None


class _SkipOps(dict):
    """Ops that cannot create a NaN: views (they alias their input) and allocations whose
    memory is uninitialised until a later op fills it. Decided once per op overload."""

    _ALLOC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted",
              "resize_", "set_", "detach", "lift_fresh", "alias"}

    def __contains__(self, func) -> bool:
        hit = self.get(func)
        if hit is None:
            name = getattr(getattr(func, "overloadpacket", None), "__name__", "")
            hit = self[func] = bool(getattr(func, "is_view", False)) or name in self._ALLOC
        return hit


def _fmt_source(src: tuple[str, int] | None) -> str:
    return f"{src[0]}:{src[1]}" if src else ""


def _flat_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            if isinstance(o, torch.Tensor):
                yield o


def _nonfinite(t: torch.Tensor) -> str:
    """'' if ``t`` is finite, else which kinds of non-finite values it holds (one cheap
    sum first; the exact checks only when the sum is not finite)."""
    if not t.is_floating_point() or t.numel() == 0 or t.is_meta:
        return ""
    s = t.sum(dtype=torch.float32) if t.dtype != torch.float64 else t.sum()
    if math.isfinite(s.item()):
        return ""
    kinds = []
    if torch.isnan(t).any():
        kinds.append("nan")
    if torch.isposinf(t).any():
        kinds.append("+inf")
    if torch.isneginf(t).any():
        kinds.append("-inf")
    return ",".join(kinds)  # "" when the sum merely overflowed


class _Mode(TorchDispatchMode):
    def __init__(self, tracer: NanTracer):
        super().__init__()
        self.tracer = tracer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tr = self.tracer
        try:
            if func in tr._skip_ops:
                return out
            code = sys._getframe(1).f_code
            ours = tr._ours.get(code)
            if ours is None:
                ours = tr._ours[code] = code.co_filename.startswith(_GRADSIGHT_DIR)
            if ours:
                return out  # gradsight's own capture work (summaries run inside backward hooks)
            node = torch._C._current_autograd_node()
            if node is None:
                if not torch.is_grad_enabled():
                    return out  # optimizer steps, evaluation: not a training forward
                seq = _get_sequence_nr()
                if seq != tr._last_seq:  # this op created autograd node seq - 1
                    tr._last_seq = seq
                    if len(tr._node_info) < MAX_NODE_INFO:
                        tr._node_info[seq - 1] = (tr._current_layer(), func, tr._find_source(sys._getframe(1)))
                if tr._n_events < MAX_EVENTS:
                    with torch.no_grad():
                        tr._check(func, args, out, None)
            elif tr._n_events < MAX_EVENTS:
                with torch.no_grad():
                    tr._check(func, args, out, node)
        except Exception as exc:  # a debugger must never break the user's step
            tr._error(exc)
        return out


class NanTracer:
    """Opt-in op-level NaN/Inf tracer for one model; see the module docstring.

    ``names`` are the qualified module names in ``model.named_modules()`` order.
    """

    def __init__(self, model: nn.Module, names: list[str]):
        self._names = list(names)
        self._mode = _Mode(self)
        self._active = False
        self._stack: list[int] = []
        self._events: list[NanEvent] = []
        self._n_events = 0
        self._bwd_seen = False
        self._node_info: dict[int, tuple] = {}
        self._last_seq = -1
        self._find_source = _SourceFinder()
        self._ours: dict = {}
        self._skip_ops = _SkipOps()
        self.errors: list[str] = []
        self._handles = []
        self._model = weakref.ref(model)
        for i, (_, m) in enumerate(model.named_modules()):
            if i >= len(self._names):
                break
            self._handles.append(m.register_forward_pre_hook(self._make_pre(i)))
            self._handles.append(m.register_forward_hook(self._make_post(i), always_call=True))

    # --- module stack ----------------------------------------------------------------
    def _make_pre(self, i: int):
        def pre(module, args):
            if i == 0 and not self._active and torch.is_grad_enabled():
                self._push()
            self._stack.append(i)

        return pre

    def _make_post(self, i: int):
        def post(module, args, output):
            # pop back to (and including) this module: robust to a child that raised
            while self._stack:
                if self._stack.pop() == i:
                    break

        return post

    def _current_layer(self) -> int:
        return self._stack[-1] if self._stack else -1

    # --- mode life cycle -----------------------------------------------------------------
    def _push(self) -> None:
        self._last_seq = _get_sequence_nr()
        self._mode.__enter__()
        self._active = True

    def _pop(self) -> None:
        if not self._active:
            return
        if _get_current_dispatch_mode() is self._mode:
            self._mode.__exit__(None, None, None)
            self._active = False
        # else: someone pushed a mode after ours and has not popped it; leave the stack
        # alone (popping theirs would break their code) and try again next step

    def harvest(self) -> list[NanEvent]:
        """Events since the last harvest; ends the step's tracing (the next forward restarts it)."""
        self._pop()
        events, self._events = self._events, []
        self._n_events = 0
        self._bwd_seen = False
        self._node_info = {}
        self._stack.clear()
        return events

    def remove(self) -> None:
        """Remove the hooks and leave the dispatch mode."""
        self._pop()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._node_info = {}

    def _error(self, exc: BaseException) -> None:
        if len(self.errors) < 10:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    # --- the check -------------------------------------------------------------------------
    def _check(self, func, args, out, node) -> None:
        what = ""
        for t in _flat_tensors(out):
            w = _nonfinite(t)
            if w:
                what = w
                break
        if not what:
            return
        backward = node is not None
        first_backward = backward and not self._bwd_seen
        if not first_backward:
            for a in args:
                for t in _flat_tensors(a):
                    if _nonfinite(t):
                        return  # propagation, not an origin
        if backward:
            self._bwd_seen = True
            info = self._node_info.get(node._sequence_nr())
            layer, fwd_func, src = info if info is not None else (-1, None, None)
            event = NanEvent(phase="backward", op=_op_name(func), source=_fmt_source(src),
                             layer=self._names[layer] if layer >= 0 else "", in_model=layer >= 0,
                             what=what, node=node.name(),
                             forward_op=_op_name(fwd_func) if fwd_func is not None else "")
        else:
            layer = self._current_layer()
            src = self._find_source(sys._getframe(2))
            event = NanEvent(phase="forward", op=_op_name(func), source=_fmt_source(src),
                             layer=self._names[layer] if layer >= 0 else "", in_model=layer >= 0,
                             what=what)
        self._events.append(event)
        self._n_events += 1
