"""The per-step bound on layer inputs a watcher keeps for ``w.gradcheck(layer)``."""

import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.kernel_hooks import sampling


def test_kept_inputs_stay_within_the_per_step_bound_and_say_why_a_layer_has_none(monkeypatch):
    monkeypatch.setattr(sampling, "MAX_KEPT_TOTAL", 300)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(32, 32) for _ in range(6)])
    w = gs.watch(model)
    model(torch.randn(8, 32)).sum().backward()
    w.step()
    cap = w._capture
    kept = {cap.names[i]: e[1][0].shape[0] for i, e in cap.last_inputs.items()}
    # 4 samples x 32 = 128 elements for '0' and '1', then one sample fits the 44 left, then none
    assert kept == {"0": 4, "1": 4, "2": 1}
    assert sum(e[1][0].numel() for e in cap.last_inputs.values()) <= 300
    assert {cap.names[i] for i in cap.inputs_not_kept} == {"3", "4", "5"}
    assert w.gradcheck("1").passed
    with pytest.raises(ValueError, match="inputs were not kept.*gs.gradcheck"):
        w.gradcheck("4")
    w.close()


def test_the_default_bound_keeps_every_layer_of_a_small_model():
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Linear(64, 4))
    w = gs.watch(model)
    model(torch.randn(32, 16)).sum().backward()
    w.step()
    assert not w._capture.inputs_not_kept
    assert {w._capture.names[i] for i in w._capture.last_inputs} == {"0", "2", "3"}
    w.close()


def test_self_attention_keeps_its_one_input_once_and_still_checks_three():
    """q, k and v of self-attention are one tensor: the watcher keeps one copy (the budget
    counts it once), and w.gradcheck still checks the three inputs apart."""
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model = Block()
    w = gs.watch(model)
    model(torch.randn(6, 5, 8, dtype=torch.float64)).sum().backward()
    w.step()
    entry = w._capture.last_inputs[w._capture.index["attn"]]
    q, k, v = entry[1][:3]
    assert q is k is v and q.shape == (4, 5, 8)
    assert sampling.plan(entry[1], entry[2])[1] == q.numel()  # counted once
    report = w.gradcheck("attn")
    assert report.passed
    assert {"query", "key", "value"} <= set(report.to_frame()["name"])  # three inputs, each perturbed alone
    w.close()
