"""All-reduce time per step, from a DDP communication hook that times the real reduction.

DDP calls its communication hook once per gradient bucket during backward; the hook returns a
future that completes when that bucket is reduced. :func:`timed` wraps a hook (the user's,
or :func:`average` — DDP's default reduction) and records the span from the first bucket
launched to the last bucket done in each step: the time this rank spent with gradients in
flight, waiting for the slowest rank included.

DDP accepts one hook per model, registered before training. :func:`install` registers
``TimedHook(average)`` when the model has none; a model that already has a hook is timed only
if that hook was wrapped with :func:`timed` (``ddp.register_comm_hook(state, gs.timed(hook))``),
otherwise ``allreduce_s`` is NaN. A hook cannot be registered on a DDP model after ``gs.watch``
installed the timing one: register yours first, wrapped in :func:`timed`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import torch


class CommTimer:
    """First launch and last completion of this step's buckets (written from DDP's threads)."""

    def __init__(self):
        self.first = math.nan
        self.last = math.nan
        self.buckets = 0

    def launched(self) -> None:
        if self.buckets == 0:
            self.first = time.perf_counter()
        self.buckets += 1

    def done(self) -> None:
        self.last = time.perf_counter()

    def take(self) -> float:
        """Seconds from the first bucket launched to the last bucket done since the last call."""
        span = self.last - self.first if self.buckets else math.nan
        self.first = self.last = math.nan
        self.buckets = 0
        return span if span >= 0 else math.nan


def timed(hook: Callable) -> Callable:
    """Wrap your DDP communication hook so gradsight reports its time per step (``w.ranks()``):
    ``ddp.register_comm_hook(state, gs.timed(hook))``, before ``gs.watch``. Returns exactly what
    ``hook`` returns, once its future completes."""
    if not callable(hook):
        raise TypeError(f"gradsight.timed expects a DDP communication hook (state, bucket) -> Future; "
                        f"got {type(hook).__name__}.")
    if isinstance(getattr(hook, "gradsight_timer", None), CommTimer):
        return hook
    timer = CommTimer()

    @functools.wraps(hook)  # DDP checks the signature and logs the name
    def timed_hook(state, bucket):
        timer.launched()

        def finished(fut):
            timer.done()
            return fut.value()

        return hook(state, bucket).then(finished)

    timed_hook.gradsight_timer = timer
    return timed_hook


def average(process_group, bucket):
    """DDP's default reduction, bit for bit: DDP without a hook multiplies each gradient by
    ``1 / world`` while copying it into the bucket, then all-reduces the sum (torch's Python
    ``allreduce_hook`` divides instead, which differs in the last bit when the world size is not a
    power of two: measured at world 3)."""
    group = process_group if process_group is not None else torch.distributed.group.WORLD
    tensor = bucket.buffer()
    tensor.mul_(1.0 / group.size())
    return torch.distributed.all_reduce(tensor, group=group, async_op=True).get_future().then(
        lambda fut: fut.value()[0])


def install(ddp) -> CommTimer | None:
    """The timer of ``ddp``'s communication hook: ours when it had none, the user's if wrapped
    with :func:`timed`, else None (all-reduce time unknown)."""
    hooks = getattr(ddp, "_comm_hooks", None)
    if hooks is None:
        return None
    if hooks:
        timer = getattr(hooks[0][0], "gradsight_timer", None)
        return timer if isinstance(timer, CommTimer) else None
    wrapper = timed(average)
    ddp.register_comm_hook(ddp.process_group, wrapper)
    return wrapper.gradsight_timer
