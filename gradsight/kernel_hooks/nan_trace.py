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

The mode is pushed at the first training forward of a step (gradients enabled, model in
train mode), so that the loss computation and the backward that follow run inside it,
and popped when the watcher closes the step. Ops with gradients disabled outside
backward (optimizer steps, evaluation), views, pure data movement and gradsight's own
capture work are not checked. On an accelerator each check reads one scalar: this mode
synchronises per op, which is why it is opt-in. It assumes one training thread
(not DataParallel replicas).
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
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode, _pop_mode, _push_mode

from .filters import hookable

_set_grad = torch._C._set_grad_enabled
MAX_EVENTS = 16          # per step: the first ones are what matters
MAX_NODE_INFO = 1 << 16  # forward ops remembered per step (bounded even for huge graphs)

_GRADSIGHT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_SKIP_DIRS = (_TORCH_DIR, _GRADSIGHT_DIR)
_STDLIB = sysconfig.get_paths().get("stdlib", "\0")


@dataclass(frozen=True)
class NanEvent:
    """An op whose output holds a kind of NaN/Inf that none of its inputs had (or, in
    backward, the first op of the step with a non-finite output)."""

    phase: str          # "forward" | "backward"
    op: str             # the aten op that produced it, e.g. "aten::log"
    source: str         # "file:line" of the user's code ("" when unknown)
    layer: str          # qualified module name ("" = the root, or outside the model)
    in_model: bool      # False: the op ran outside any watched module (e.g. the loss)
    what: str           # the new kinds: "nan", "+inf", "-inf" or a mix like "nan,+inf"
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
    # ops that only move, select or fill values: their output cannot hold a NaN/Inf that is
    # not in an input (or a literal), so they are never an origin and need no check
    _MOVE = {"cat", "stack", "clone", "copy_", "index_select", "gather", "embedding", "relu", "relu_",
             "threshold_backward", "max_pool2d_with_indices", "max_pool2d_with_indices_backward",
             "constant_pad_nd", "where", "masked_fill", "masked_fill_", "zero_", "fill_", "zeros_like",
             "ones_like", "full_like", "zeros", "ones", "full", "scalar_tensor", "new_zeros", "new_ones",
             "new_full", "arange", "repeat", "flip", "roll", "sort", "topk", "amax", "amin", "max", "min",
             "clamp", "clamp_min", "clamp_max", "abs", "neg", "sign", "native_dropout"}

    def __contains__(self, func) -> bool:
        hit = self.get(func)
        if hit is None:
            name = getattr(getattr(func, "overloadpacket", None), "__name__", "")
            hit = self[func] = bool(getattr(func, "is_view", False)) or name in self._ALLOC or name in self._MOVE
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


_NONE: frozenset = frozenset()


def _nonfinite(t: torch.Tensor) -> frozenset:
    """The kinds of non-finite values in ``t`` ("nan", "+inf", "-inf"): one cheap sum first,
    the exact checks only when the sum is not finite (it may merely have overflowed)."""
    if not t.is_floating_point() or t.numel() == 0 or t.is_meta:
        return _NONE
    s = t.sum() if t.dtype == torch.float32 or t.dtype == torch.float64 else t.sum(dtype=torch.float32)
    if math.isfinite(s.item()):
        return _NONE
    kinds = set()
    if torch.isnan(t).any():
        kinds.add("nan")
    if torch.isposinf(t).any():
        kinds.add("+inf")
    if torch.isneginf(t).any():
        kinds.add("-inf")
    return frozenset(kinds)


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
            if tr._called_by_gradsight(sys._getframe(1)):
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
                    _set_grad(False)  # our sums must not record autograd history (cheaper than no_grad())
                    try:
                        tr._check(func, args, kwargs, out, None)
                    finally:
                        _set_grad(True)
            else:
                tr._backward_ran = True
            if node is not None and tr._n_events < MAX_EVENTS:
                grad = torch.is_grad_enabled()
                _set_grad(False)
                try:
                    tr._check(func, args, kwargs, out, node)
                finally:
                    _set_grad(grad)
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
        self._backward_ran = False
        self._node_info: dict[int, tuple] = {}
        self._last_seq = -1
        self._find_source = _SourceFinder()
        self._where: dict = {}  # code object -> 0 torch, 1 gradsight, 2 anything else
        self._skip_ops = _SkipOps()
        self.errors: list[str] = []
        self._handles = []
        self._model = weakref.ref(model)
        index = {n: i for i, n in enumerate(self._names)}
        for name, m in model.named_modules():
            i = index.get(name)
            if i is None or not hookable(m):  # not watched (gs.watch(include=/exclude=)), or TorchScript
                continue
            self._handles.append(m.register_forward_pre_hook(self._make_pre(i)))
            self._handles.append(m.register_forward_hook(self._make_post(i), always_call=True))

    # --- module stack ----------------------------------------------------------------
    def _make_pre(self, i: int):
        def pre(module, args):
            if i == 0 and torch.is_grad_enabled() and module.training \
                    and torch._C._current_graph_task_id() == -1:  # a training forward, not a recompute
                if not self._active:
                    self._push()
                elif self._backward_ran:  # a new forward after a backward (gradient accumulation,
                    self._node_info = {}  # or steps the watcher does not sample): start afresh
                    self._bwd_seen = False
                self._backward_ran = False
            self._stack.append(i)

        return pre

    def _make_post(self, i: int):
        def post(module, args, output):
            # pop back to (and including) this module: robust to a child that raised
            while self._stack:
                if self._stack.pop() == i:
                    break

        return post

    def _called_by_gradsight(self, frame) -> bool:
        """Whether the first caller outside torch is gradsight's capture (cached per code object)."""
        where = self._where
        for _ in range(8):
            if frame is None:
                return False
            code = frame.f_code
            kind = where.get(code)
            if kind is None:
                fn = code.co_filename
                kind = where[code] = 1 if fn.startswith(_GRADSIGHT_DIR) else 0 if fn.startswith(_TORCH_DIR) else 2
            if kind:
                return kind == 1
            frame = frame.f_back
        return False

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

    def pause(self) -> bool:
        """Step out of the mode for gradsight's own tensor work (the capture's hooks), if it is
        the innermost one; True when it did (then :meth:`resume`). Every op dispatched through
        the mode pays its Python round trip (~10-20 us) even when it is then skipped as
        gradsight's own, and many of a watched step's ops are. Another mode pushed after ours
        stays untouched: then ``_called_by_gradsight`` still skips our ops."""
        try:
            if self._active and _get_current_dispatch_mode() is self._mode:
                _pop_mode()
                return True
        except Exception as exc:  # never from a hook into the user's step
            self._error(exc)
        return False

    def resume(self) -> None:
        """Re-enter the mode after :meth:`pause` returned True."""
        try:
            _push_mode(self._mode)
        except Exception as exc:  # the step goes on untraced; the next forward pushes it again
            self._active = False
            self._error(exc)

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
    def _check(self, func, args, kwargs, out, node) -> None:
        what = set()
        for t in _flat_tensors(out):
            what |= _nonfinite(t)
        if not what:
            return
        backward = node is not None
        first_backward = backward and not self._bwd_seen
        seen_in = _input_kinds(args, kwargs)
        if seen_in is None:
            return  # no tensor inputs: a literal (torch.full(..., -inf) for a mask), not an origin
        if not first_backward:
            what -= seen_in  # only kinds the inputs did not have: -Inf in, NaN out is still news
            if not what:
                return  # propagation, not an origin
        label = ",".join(k for k in ("nan", "+inf", "-inf") if k in what)
        if backward:
            self._bwd_seen = True
            info = self._node_info.get(node._sequence_nr())
            layer, fwd_func, src = info if info is not None else (-1, None, None)
            event = NanEvent(phase="backward", op=_op_name(func), source=_fmt_source(src),
                             layer=self._names[layer] if layer >= 0 else "", in_model=layer >= 0,
                             what=label, node=node.name(),
                             forward_op=_op_name(fwd_func) if fwd_func is not None else "")
        else:
            layer = self._current_layer()
            src = self._find_source(sys._getframe(2))
            event = NanEvent(phase="forward", op=_op_name(func), source=_fmt_source(src),
                             layer=self._names[layer] if layer >= 0 else "", in_model=layer >= 0,
                             what=label)
        self._events.append(event)
        self._n_events += 1


def _input_kinds(args, kwargs) -> set | None:
    """Non-finite kinds among an op's inputs (tensors and Python numbers); None if no tensor input."""
    kinds: set = set()
    any_tensor = False
    for a in (*args, *kwargs.values()) if kwargs else args:
        if isinstance(a, (float, int)) and not isinstance(a, bool):
            if math.isnan(a):
                kinds.add("nan")
            elif math.isinf(a):
                kinds.add("+inf" if a > 0 else "-inf")
            continue
        for t in _flat_tensors(a):
            any_tensor = True
            kinds |= _nonfinite(t)
    return kinds if any_tensor else None
