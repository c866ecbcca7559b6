"""Issue 12, cases 5-7: registration rolls back, nothing raises from training calls, closed
watchers are freed by reference counting alone, memory is sized to the model."""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch
from naive_stats import batch, hook_count, mlp
from torch import nn

import gradsight as gs
from gradsight import GradsightWarning, bus


class _Unhookable(nn.Linear):
    def register_forward_hook(self, *args, **kwargs):
        raise RuntimeError("this module takes no hooks")


def test_case5_failed_watch_leaves_no_hook():
    """Hook registration fails part-way (the last module refuses): the hooks already placed go."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), _Unhookable(4, 4))
    with pytest.raises(RuntimeError, match="takes no hooks"):
        gs.watch(model)
    assert hook_count(model) == 0
    assert bus.watcher_of(model) is None


def test_case5_failure_after_the_hooks_rolls_back(monkeypatch):
    import gradsight.watcher as watcher_mod

    def boom(*a, **k):
        raise RuntimeError("detectors failed to start")

    monkeypatch.setattr(watcher_mod, "DetectorEngine", boom)
    model = mlp()
    with pytest.raises(RuntimeError, match="detectors failed"):
        gs.watch(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert hook_count(model) == 0


def test_case6_errors_while_closing_a_step_never_reach_optimizer_step(monkeypatch):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt)
    monkeypatch.setattr(w._capture.buffer, "fetch", lambda with_hist, loss=None: 1 / 0)
    x, y = batch(0)
    nn.functional.mse_loss(model(x), y).backward()
    with pytest.warns(GradsightWarning, match="<step>.*ZeroDivisionError"):
        opt.step()  # must not raise
    assert w.step_count == 1 and not w._capture._tensor_handles
    monkeypatch.undo()
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert w.last_step == 1  # the next step is recorded again
    w.close()


def test_case6_meta_device_training_does_not_raise():
    model = mlp().to("meta")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = gs.watch(model, optimizer=opt)
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 8, device="meta")).sum().backward()
            opt.step()
    assert w.step_count == 2
    w.close()


def _train(model, opt, steps=3):
    for s in range(steps):
        x, y = batch(s)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("with_optimizer", [True, False])
def test_case7_closed_watcher_is_freed_by_reference_counting(with_optimizer):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gc.collect()
    gc.disable()
    try:
        w = gs.watch(model, optimizer=opt if with_optimizer else None, nan_trace="op")
        _train(model, opt)
        w.step()
        ref, capture = weakref.ref(w), weakref.ref(w._capture)
        w.close()
        del w
        assert ref() is None, gc.get_referrers(ref())
        assert capture() is None, gc.get_referrers(capture())  # its buffers too: no cycle through its parts
        assert hook_count(model) == 0
    finally:
        gc.enable()


def test_case7_rerun_cell_frees_the_previous_watcher():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gc.disable()
    try:
        w = gs.watch(model, optimizer=opt)
        first = weakref.ref(w)
        _train(model, opt, 1)
        w = gs.watch(model, optimizer=opt)  # the re-run cell
        assert first() is None
        assert bus.watcher_of(model) is w
    finally:
        gc.enable()
    w.close()


def test_case7_small_model_history_is_small():
    model = mlp()
    w = gs.watch(model)
    assert w.memory_bytes() < 2**20, w.memory_bytes()  # was ~21 MiB preallocated
    assert w._history.max_nbytes <= 64 * 2**20  # the documented cap still holds
    w.close()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_case7_200_reruns_of_a_watch_cell_add_little_memory():
    """200 re-runs of `w = gs.watch(model)` + a few steps: < 20 MB RSS (measured ~1-3 MB)."""
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def cell():
        w = gs.watch(model, optimizer=opt)
        _train(model, opt, 2)
        return w

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = cell()
        for _ in range(20):  # warm-up: allocator and caches settle
            w = cell()
        gc.collect()
        before = _rss()
        for _ in range(200):
            w = cell()
        gc.collect()
        grown = _rss() - before
    w.close()
    print(f"200 re-runs: +{grown / 2**20:.2f} MiB RSS")
    assert grown < 20 * 2**20, f"+{grown / 2**20:.1f} MiB"
