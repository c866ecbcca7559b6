"""What issue 10 added to capture: bytes saved for backward per layer, the step's time
split, and clipping seen without ``optimizer=``."""

from __future__ import annotations

import time
from pathlib import Path

import faulty_models as fm
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from faulty_models import one_thread  # noqa: F401 - the fixture
from torch import nn

import gradsight as gs

OUT = Path(__file__).resolve().parents[1] / "test-artifacts" / "figures"


pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _train(model, steps, *, optimizer=True, watch=None, before=None, loss_fn=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = gs.watch(model, optimizer=opt if optimizer else None, **(watch or {}))
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        if before is not None:
            before(step)
        x = torch.randn(8, 16, generator=gen)
        opt.zero_grad()
        loss = (loss_fn or (lambda out: out.square().mean()))(model(x))
        loss.backward()
        opt.step()
        w.step(loss)
    return w


# --- saved_bytes -----------------------------------------------------------------------------------

def test_saved_bytes_per_layer_match_what_autograd_keeps():
    w = _train(_mlp(), 3, watch={"histogram_every": 2})
    lay = w.layers().set_index("layer")
    # naive: Linear 0 keeps its input (8x16 float32); ReLU keeps its output (8x32); Linear 2 keeps its input,
    # which *is* the ReLU output (one storage, counted once); weights are parameters (not counted)
    assert lay.loc["0", "saved_bytes"] == 8 * 16 * 4
    assert lay.loc["1", "saved_bytes"] == 8 * 32 * 4
    assert lay.loc["2", "saved_bytes"] == 0 and lay.loc["", "saved_bytes"] == 0
    steps = w.steps().set_index("step")
    assert steps.loc[0, "saved_bytes"] == steps.loc[2, "saved_bytes"] == 8 * 16 * 4 + 8 * 32 * 4
    assert np.isnan(steps.loc[1, "saved_bytes"])  # detail steps only
    per_layer = w.history("saved_bytes")  # the per-layer history; the step total is steps()'s
    assert list(per_layer.columns) == w.layer_names
    assert per_layer.loc[2, "1"] == 8 * 32 * 4
    assert np.isnan(per_layer.loc[1]).all()
    w.close()


def test_saved_bytes_counts_attention_internals_at_the_attention_module():
    run = fm.healthy("gpt2", "sgd", steps=1)
    lay = run.watcher.layers().set_index("layer")
    attn, proj = lay.loc["lm.transformer.h.0.attn", "saved_bytes"], lay.loc["lm.transformer.h.0.attn.c_proj",
                                                                            "saved_bytes"]
    assert attn > 4 * proj  # the scores and probabilities belong to the attention's own code
    assert run.watcher.steps().saved_bytes.iloc[0] == pytest.approx(lay.saved_bytes.sum())


def test_user_saved_tensor_hooks_still_run_and_training_is_unchanged():
    calls = []

    def pack(t):
        calls.append(t.shape)
        return t.clone()  # an offloading hook that copies

    def run(watched: bool):
        calls.clear()
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        w = gs.watch(model, optimizer=opt) if watched else None
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            x = torch.randn(8, 16, generator=gen)
            opt.zero_grad()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = model(x).square().mean()
            loss.backward()
            opt.step()
        if w is not None:
            w.close()
        return [p.detach().clone() for p in model.parameters()], list(calls)

    plain, plain_calls = run(False)
    watched, watched_calls = run(True)
    assert watched_calls == plain_calls  # chained, not replaced
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None  # nothing left pushed


def test_a_forward_that_raises_leaves_no_hooks_behind():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Linear(4, 4), Boom())
    w = gs.watch(model)
    with pytest.raises(RuntimeError, match="boom"):
        model(torch.randn(2, 4))
    w.step()
    assert torch._C._autograd._top_saved_tensors_default_hooks(False) is None
    assert not model[0]._forward_pre_hooks
    w.close()


def test_saved_memory_figure():
    from gradsight import widgets as gw

    run = fm.healthy("cnn_bn", "sgd", steps=2)
    fig = gw.saved_memory(run.watcher)
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "saved_memory_cnn_bn.png")
    ax = fig.axes[0]
    assert "Memory saved for backward" in ax.get_title() and len(ax.patches) >= 8
    empty = gw.saved_memory(gs.watch(_mlp()))
    assert "no data" in empty.axes[0].texts[0].get_text()


# --- the step's time split ---------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", [True, False])
def test_time_split_data_forward_backward_optimizer(optimizer):
    w = _train(_mlp(), 4, optimizer=optimizer, before=lambda step: time.sleep(0.03))  # a slow data loader
    s = w.steps()
    later = s.iloc[1:]
    assert (later.data_s >= 0.03).all() and (later.data_s < 1.0).all()
    for col in ("forward_s", "backward_s", "optimizer_s"):
        assert (s[col] >= 0).all() and (s[col] < 0.03).all(), col
    w.close()


def test_training_curves_show_the_time_split():
    from gradsight import widgets as gw

    w = _train(_mlp(), 5)
    fig = gw.training_curves(w)
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "training_curves_time_split.png")
    timing = fig.axes[-1]
    assert timing.get_ylabel() == "step time (ms)"
    assert [t.get_text() for t in timing.get_legend().get_texts()] == ["data", "forward", "backward", "optimizer"]
    w.close()


# --- clipping without optimizer= --------------------------------------------------------------------

def test_clipping_is_seen_without_optimizer():
    run = fm.aggressive_clipping(steps=25, watch_optimizer=False)
    f = run.findings()
    clip = f[f.kind == "clipping"]
    assert len(clip) == 1 and clip.status.iloc[0] == "confirmed" and clip.value.iloc[0] > 1000
    assert clip.severity.iloc[0] == "warning"


def test_no_clipping_no_finding_without_optimizer():
    torch.manual_seed(0)
    model = fm.he_mlp()
    run = fm.train(model, torch.optim.SGD(model.parameters(), lr=0.05), fm.classification(), 25, F.cross_entropy,
                   watch_optimizer=False)
    assert run.findings().empty
