"""check_module_call: a layer checked on the (args, kwargs) it received, as it sits in a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsight.gradcheck import (
    ELEMENT_SAMPLES,
    MAX_CAPTURE_ELEMENTS,
    MAX_SAMPLES,
    GradcheckError,
    check_module_call,
    slice_batch,
)


class LeakyScale(nn.Module):
    """A custom layer with a hand-written backward: the grad of `gain` misses a factor 2."""

    def __init__(self, n):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, n))
        self.proj = nn.Linear(n, n)

    def forward(self, x, *, shift=0.0):
        return _SquareGain.apply(self.proj(x) + shift, self.gain)


class _SquareGain(torch.autograd.Function):
    """y = x * gain**2."""

    @staticmethod
    def forward(ctx, x, gain):
        ctx.save_for_backward(x, gain)
        return x * gain**2

    @staticmethod
    def backward(ctx, g):
        x, gain = ctx.saved_tensors
        return g * gain**2, (g * x * gain).sum(0)  # should be 2 * x * gain


def capture(module, *args, **kwargs):
    """What the watcher does: record the call's arguments with a forward pre-hook."""
    seen = {}

    def hook(mod, a, kw):
        seen["args"], seen["kwargs"] = a, kw

    h = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        module(*args, **kwargs)
    finally:
        h.remove()
    return seen["args"], seen["kwargs"]


def test_linear_in_a_model_passes_on_sliced_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(32, 6)
    args, kwargs = capture(model[2], model[1](model[0](x)))
    assert args[0].shape[0] == 32
    report = check_module_call(model[2], args, kwargs, name="2")
    assert report.passed
    assert [r.name for r in report.rows] == ["input", "weight", "bias"]
    assert report.rows[0].shape == (MAX_SAMPLES, 8)  # sliced to a few samples
    assert report.fn == "2 (Linear)" and report.to_dict()["layer"] == "2"
    report.step = 17  # what the watcher records
    assert report.to_dict()["step"] == 17 and "step 17" in report._repr_html_()


def test_buggy_custom_layer_fails_on_its_parameter_only():
    torch.manual_seed(0)
    layer = LeakyScale(4)
    args, kwargs = capture(layer, torch.randn(16, 4), shift=0.25)
    assert kwargs == {"shift": 0.25}
    report = check_module_call(layer, args, kwargs)
    assert report.failed == ["gain"]
    assert [r.name for r in report.rows] == ["x", "gain", "proj.weight", "proj.bias"]
    fast = check_module_call(layer, args, kwargs, mode="fast")
    assert fast.failed == ["gain"]


def test_live_module_and_captured_tensors_untouched():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5), nn.Dropout(0.3)).train()
    x = torch.randn(10, 5)
    args, kwargs = capture(layer, x)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    x_before = args[0].clone()
    rng = torch.get_rng_state()
    report = check_module_call(layer, args, kwargs)
    assert report.passed
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(args[0], x_before) and args[0].shape == (10, 5)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in layer.parameters()) and layer.training


def test_large_layer_is_compared_on_sampled_elements_with_a_note():
    torch.manual_seed(0)
    layer = nn.Linear(256, 256)
    report = check_module_call(layer, (torch.randn(8, 256),))
    assert report.passed
    assert report.rows[1].method == f"{ELEMENT_SAMPLES} random of {256 * 256:,} elements"
    assert "too large for full mode" in report.notes[0]
    with pytest.raises(GradcheckError, match="samples="):  # asking for everything explicitly
        check_module_call(layer, (torch.randn(8, 256),), mode="full", samples=None, max_samples=8)


def test_slice_batch_cuts_batch_tensors_only():
    x, mask, table = torch.randn(10, 3), torch.ones(10, dtype=torch.bool), torch.randn(7, 3)
    args, kwargs = slice_batch((x, "mean", [mask]), {"table": table, "k": 2})
    assert args[0].shape == (MAX_SAMPLES, 3) and args[1] == "mean" and args[2][0].shape == (MAX_SAMPLES,)
    assert kwargs["table"].shape == (7, 3) and kwargs["k"] == 2
    assert args[0].data_ptr() != x.data_ptr()  # copies, not views of the training tensors
    args[0].add_(1)
    assert not torch.equal(args[0], x[:MAX_SAMPLES])


def test_slice_batch_respects_the_memory_bound():
    big = torch.randn(4, MAX_CAPTURE_ELEMENTS // 2)
    (cut,), _ = slice_batch((big,))
    assert cut.numel() <= MAX_CAPTURE_ELEMENTS and cut.shape[0] == 2
    huge = torch.randn(2, MAX_CAPTURE_ELEMENTS)
    (one,), _ = slice_batch((huge,))
    assert one.shape[0] == 1  # never fewer than one sample


def test_bad_arguments_are_explained():
    with pytest.raises(GradcheckError, match="expected an nn.Module"):
        check_module_call(torch.sin, (torch.randn(3),))
    with pytest.raises(GradcheckError, match="max_samples must be an int >= 1"):
        check_module_call(nn.Linear(2, 2), (torch.randn(3, 2),), max_samples=0)


class Cache:
    """A key/value cache like transformers' DynamicCache: updated in place by every call."""

    def __init__(self):
        self.keys = None

    def update(self, k):
        self.keys = k if self.keys is None else torch.cat([self.keys, k], dim=1)
        return self.keys


class CachedAttention(nn.Module):
    """Attends over the cached keys plus its own: each call appends to the cache it is given."""

    def __init__(self, n):
        super().__init__()
        self.k = nn.Linear(n, n)

    def forward(self, x, cache):
        keys = cache.update(self.k(x))
        return (x @ keys.transpose(1, 2)).softmax(-1) @ keys


def test_mutable_argument_gets_a_fresh_copy_per_call_and_is_left_untouched():
    torch.manual_seed(0)
    layer, cache = CachedAttention(4), Cache()
    layer(torch.randn(2, 3, 4), cache)  # the cache now holds keys with autograd history
    args, kwargs = capture(layer, torch.randn(2, 3, 4), cache)
    before = cache.keys.detach().clone()
    for mode in ("full", "fast"):  # before: calls appended to one shared cache, and vmap leaked into it
        report = check_module_call(layer, args, kwargs, mode=mode)
        assert report.passed, report
    assert cache.keys.shape == before.shape and torch.equal(cache.keys.detach(), before)


def test_gpt2_block_in_a_watched_model():
    pytest.importorskip("transformers")
    from benchmarks.gradcheck import watched_gpt2

    model, w = watched_gpt2()
    with w:
        report = w.gradcheck("h.0")  # before: RuntimeError from inside functorch (the KV cache)
    assert report.passed, report
    assert report.rows[0].name == "hidden_states" and len(report.rows) == 13  # the input and 12 parameters
