"""Sparse gradients and models stepped by two optimizers (a dense one and ``SparseAdam`` for a
sparse embedding, or any split of the parameters): every number is the real one or NaN, never a
wrong 0 and never a failed capture."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8, sparse=True)
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h, _ = self.rnn(self.emb(x))
        return self.head(h[:, -1])


def _setup():
    torch.manual_seed(0)
    m = Tagger()
    dense = torch.optim.Adam([p for n, p in m.named_parameters() if not n.startswith("emb")], lr=1e-2)
    sparse = torch.optim.SparseAdam(list(m.emb.parameters()), lr=1e-2)
    return m, dense, sparse


def _batch(s):
    g = torch.Generator().manual_seed(s)
    x = torch.randint(0, 50, (6, 5), generator=g)
    x[:, 0] = 7  # repeated indices: the COO gradient is uncoalesced, its duplicates add up
    return x, torch.randint(0, 3, (6,), generator=g)


def _step(m, dense, sparse, s):
    x, y = _batch(s)
    dense.zero_grad()
    sparse.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    grads = {n: p.grad.to_dense().norm().item() for n, p in m.named_parameters()}
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    dense.step()
    sparse.step()
    return grads, before


def _layer_norm(m, layer, values):
    prefix = f"{layer}."
    return float(np.sqrt(sum(v ** 2 for n, v in values.items() if n.startswith(prefix))))


def test_sparse_embedding_gradients_are_measured_like_their_dense_form():
    m, dense, sparse = _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an internal-error warning fails the test
        w = gs.watch(m, optimizer=dense, histogram_every=1)
        for s in range(3):
            grads, _ = _step(m, dense, sparse, s)
    assert m.emb.weight.grad.is_sparse and not m.emb.weight.grad.is_coalesced()
    table = w.layers().set_index("layer")
    for layer in ("emb", "rnn", "head"):
        assert table.loc[layer, "param_grad_norm"] == pytest.approx(_layer_norm(m, layer, grads), rel=1e-5)
    assert w.steps()["total_grad_norm"].iloc[-1] == pytest.approx(
        float(np.sqrt(sum(v ** 2 for v in grads.values()))), rel=1e-5)
    assert w.findings().empty
    w.close()


def test_updates_of_parameters_another_optimizer_steps_are_nan_not_zero():
    m, dense, sparse = _setup()
    w = gs.watch(m, optimizer=dense, histogram_every=1)
    for s in range(3):
        _, before = _step(m, dense, sparse, s)
    moved = {n: (p.detach() - before[n]).norm().item() for n, p in m.named_parameters()}
    table = w.layers().set_index("layer")
    assert moved["emb.weight"] > 0
    assert np.isnan(table.loc["emb", "update_norm"])  # SparseAdam moved it after the step closed: unknown
    for layer in ("rnn", "head"):
        assert table.loc[layer, "update_norm"] == pytest.approx(_layer_norm(m, layer, moved), rel=1e-4)
    w.close()


def test_without_optimizer_every_optimizer_s_update_is_measured():
    m, dense, sparse = _setup()
    w = gs.watch(m, histogram_every=1)
    for s in range(3):
        _, before = _step(m, dense, sparse, s)
        w.step()
    moved = {n: (p.detach() - before[n]).norm().item() for n, p in m.named_parameters()}
    table = w.layers().set_index("layer")
    for layer in ("emb", "rnn", "head"):
        assert table.loc[layer, "update_norm"] == pytest.approx(_layer_norm(m, layer, moved), rel=1e-4)
    w.close()


def test_a_param_group_added_later_has_its_updates_measured():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    opt = torch.optim.SGD(m[0].parameters(), lr=0.1)
    w = gs.watch(m, optimizer=opt, histogram_every=1)
    x = torch.randn(8, 4)

    def step():
        opt.zero_grad()
        m(x).square().mean().backward()
        before = m[2].weight.detach().clone()
        opt.step()
        return (m[2].weight.detach() - before).norm().item()

    step()
    assert np.isnan(w.layers().set_index("layer").loc["2", "update_norm"])  # not stepped by opt (yet)
    opt.add_param_group({"params": [m[2].weight]})
    moved = step()
    assert moved > 0 and w.layers().set_index("layer").loc["2", "update_norm"] == pytest.approx(moved, rel=1e-4)
    w.close()
