"""The step life cycle under notebook edits: what the watcher does when what it watches changed.

A step opens at a step boundary and closes at ``optimizer.step()`` (with ``optimizer=``) or
``w.step()``. Between the two, a notebook may replace a parameter, add or remove a module,
create a new optimizer, forget ``w.step()``, call it twice, or re-run a forward that raised.
The rule: follow the change (re-index, said once) or name it in one GradsightWarning, and
never report numbers that mix two states. Every check here is O(1) per step (flags set by
torch's hooks, version counters); the full structure comparison runs on detail steps only.
"""

from __future__ import annotations

import sys
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import torch

from . import bus
from .detectors import DetectorEngine
from .warnings import GradsightWarning, user_stacklevel


def say_once(w: Any, key: str, message: str) -> None:
    """One GradsightWarning per watcher and kind of event."""
    if key in w._said:
        return
    w._said.add(key)
    warnings.warn(f"gradsight [{w.name}]: {message}", GradsightWarning, stacklevel=user_stacklevel())


def check_forward_start(w: Any) -> None:
    """A training forward of the whole model is starting (called from the root pre-hook)."""
    c = w._capture
    model = w.model
    if c._closed or model is None or not model.training:
        return
    # 1. the previous attempt did not finish: drop its partial capture
    if c.interrupted_backward:
        _abandon(w, "a backward pass was interrupted (an exception or KeyboardInterrupt)")
    elif c._root_open and not _root_reentered(model):
        _abandon(w, "a forward pass raised before it returned")
    # 2. the last step was never closed (no optimizer=, w.step() never called)
    if w._optimizer_ref is None and not w._user_stepped and c.began:
        moved = w._opt_stepped_since_forward or (c.capturing and c.completed_backwards and c.grads_moved())
        if moved:
            say_once(w, "forgotten", "w.step() is not being called, so every training step would pile into "
                     "one. gradsight now closes a step when a forward starts after the weights were updated; "
                     "call w.step() after optimizer.step(), or pass optimizer= to gs.watch to close steps "
                     "exactly.")
            w._close_step(loss=None, optimizer_stepped=None)
            c = w._capture
    w._opt_stepped_since_forward = False
    # 3. the model changed: follow it
    changes = c.changes
    if changes is not None and (changes.reason is not None or (c.detail and not c.began and changes.check(c._model()))):
        if c.touched or c.began:
            _abandon(w, changes.reason)
        reindex(w, changes.reason)


_CALL = torch.nn.Module._call_impl.__code__


def _root_reentered(model: Any) -> bool:
    """The root's forward is still running and calls the root again: a nested call, not an attempt
    that raised. Lightning's DDP strategy does this every step (DDP calls the LightningModule, whose
    forward is redirected to ``training_step``, which calls ``self(x)``). Walks the stack only in
    this rare state (the root open at a new root forward)."""
    frame, calls = sys._getframe(1), 0
    while frame is not None:
        if frame.f_code is _CALL and frame.f_locals.get("self") is model:
            calls += 1
            if calls > 1:
                return True
        frame = frame.f_back
    return False


def _abandon(w: Any, why: str) -> None:
    """The open step's capture is partial: drop it if no backward completed yet (the retry
    starts clean), else mark the step so that it is not recorded at all."""
    c = w._capture
    if c.completed_backwards:
        w._tainted = why
        return
    c.discard_step()
    c._root_open = False
    say_once(w, f"abandon:{why}", f"{why} in step {w.step_count}; what it captured was discarded, so the "
             "retried step is measured alone.")


def step_is_empty(w: Any) -> bool:
    """``w.step()`` with no training forward since the last step boundary (called twice, or
    with no forward): ignored, so step numbers stay those of real steps."""
    c = w._capture
    if c.began or c.touched or w._compiled is not None:  # compiled graphs may not run hooks
        return False
    say_once(w, "empty", f"w.step() was called with no training forward since step {w.step_count - 1} "
             "closed (called twice, or before any forward in train() mode with gradients enabled); "
             "ignored, so step numbers stay those of real training steps.")
    return True


def reindex(w: Any, reason: str) -> None:
    """Rebuild the hooks for the model as it is now; keep the history of layers that stayed."""
    old = w._capture
    flags = (old.capturing, old.detail, old.measure_update, old.update_source)
    w._release_hooks()
    try:
        new = w._new_capture()
    except Exception as exc:
        say_once(w, "reindex-failed", f"the model changed ({reason}) and its new structure cannot be "
                 f"watched ({type(exc).__name__}: {exc}); this watcher is closed. Call gs.watch(model) again.")
        w.close()
        return
    new.capturing, new.detail, new.measure_update, new.update_source = flags
    new.began = old.began
    with bus.lock:
        w._capture = new
        at = {mid: i for i, mid in enumerate(new.module_ids)}
        moved = [(i, at[mid]) for i, mid in enumerate(old.module_ids)
                 if mid in at and new.types[at[mid]] == old.types[i]]
        w._history.reindex(new.names, new.types, new.param_counts(), moved)
        engine = DetectorEngine(layers=tuple(new.names), types=tuple(new.types),
                                thresholds=w._detectors.thresholds)
        engine.log = w._detectors.log  # findings so far are kept (they name layers, not rows)
        w._detectors = engine
    if w._nan_tracer is not None:
        from .kernel_hooks.nan_trace import NanTracer

        w._nan_tracer = NanTracer(w._compiled or w.model, list(new.names))
    opt = w._optimizer_ref() if w._optimizer_ref is not None else None
    if opt is not None:
        w._hook_optimizer(opt)
    w._global_opt_handles = register_global(w)
    say_once(w, "reindex", f"the model changed ({reason}) before step {w.step_count}: now watching "
             f"{len(new.names)} layers and {len(new.param_names)} parameters. Layers that kept their name "
             "keep their history; further changes are followed without another warning.")


def register_global(w: Any) -> tuple:
    """torch's process-wide optimizer hooks for ``w`` (held weakly): every optimizer's pre- and
    post-step, for O(1) checks (a new optimizer, a forgotten w.step(), the update snapshot)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    ref = weakref.ref(w)
    return (register_optimizer_step_post_hook(any_optimizer_step(ref)),
            register_optimizer_step_pre_hook(any_optimizer_pre_step(ref)))


def any_optimizer_pre_step(ref: weakref.ref) -> Callable:
    """torch's global optimizer pre-step hook: without ``optimizer=``, the weights are copied for
    the update norm just before an optimizer steps them, not at the forward's start."""
    def hook(optimizer, args, kwargs):
        w = ref()
        if w is None or w.closed or w._optimizer_ref is not None or w.model is None:
            return
        try:
            if _steps_ours(w, optimizer):
                w._capture.before_update()
        except Exception as exc:  # never raise from optimizer.step()
            w._hook_error("<optimizer>", exc)

    return hook


def any_optimizer_step(ref: weakref.ref) -> Callable:
    """torch's global optimizer post-step hook, holding the watcher weakly."""
    def hook(optimizer, args, kwargs):
        w = ref()
        if w is not None and not w.closed and w.model is not None:
            try:
                _optimizer_stepped(w, optimizer)
            except Exception as exc:  # never raise from optimizer.step()
                w._hook_error("<optimizer>", exc)

    return hook


def _holds(identities: dict[int, weakref.ref], t: Any) -> bool:
    ref = identities.get(id(t))
    return t is not None and ref is not None and ref() is t


def _steps_ours(w: Any, optimizer: Any) -> bool:
    """Does ``optimizer`` step this watcher's parameters? (cached per optimizer object)"""
    mine = w._optimizer_ref() if w._optimizer_ref is not None else None
    hit = w._foreign.get(id(optimizer))
    if hit is None or hit[0]() is not optimizer:
        first = next((p for g in optimizer.param_groups for p in g["params"]), None)
        ours = [w._param_ids]
        if mine is not None:
            # with optimizer=: the same parameters as the one given (a re-created optimizer), or
            # any of the model's when the given one no longer holds the model's (its first
            # parameter was replaced); not another part of the model (a GAN's other optimizer)
            mine_first = next((p for g in mine.param_groups for p in g["params"]), None)
            ours = [w._opt_param_ids] if _holds(w._param_ids, mine_first) else [w._opt_param_ids, w._param_ids]
        hit = w._foreign[id(optimizer)] = (weakref.ref(optimizer), any(_holds(s, first) for s in ours))
        if len(w._foreign) > 64:
            w._foreign = {k: v for k, v in w._foreign.items() if v[0]() is not None}
    return hit[1]


def _optimizer_stepped(w: Any, optimizer: Any) -> None:
    mine = w._optimizer_ref() if w._optimizer_ref is not None else None
    if optimizer is mine or not _steps_ours(w, optimizer):
        return  # another model's optimizer, or another part of this model (a GAN's other half)
    if w._optimizer_ref is None:  # no optimizer= given: only note it (see check_forward_start)
        w._opt_stepped_since_forward = True
        return
    # a new optimizer over the same parameters (the old one freed, or living on in an LR scheduler)
    say_once(w, "new-optimizer", f"a new {type(optimizer).__name__} object is stepping the parameters that "
             f"gs.watch(optimizer=...) was given; gradsight follows it from step {w.step_count} (learning "
             "rates, skipped steps). Pass the new optimizer to gs.watch to silence this.")
    w._hook_optimizer(optimizer)
    w._close_step(loss=None, optimizer_stepped=True)
    w._auto_closed_pending_loss = True
