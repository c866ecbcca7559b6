"""The layer x step heatmap message: one metric of every layer over the recorded steps, of one
rank; bounded to 500 columns by grouping steps, each group its most extreme step (checked
against a naive loop), non-finite steps counted per cell, for live watchers and recordings (a ranked one:
test_comm_rank_layers.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.comm import heatmap
from gradsight.comm.buffers import unpack
from gradsight.comm.schema import validate


def _naive(values: np.ndarray, bad: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray]:
    """One cell at a time: the first non-finite step, else the first exact zero, else the step
    furthest from the layer's median log10 (first on ties); NaN if no step has a value."""
    L, S = values.shape
    cols = -(-S // span)
    cells, counts = np.full((L, cols), np.nan), np.zeros((L, cols), dtype=np.int64)
    for i in range(L):
        logs = [np.log10(abs(v)) for v in values[i] if np.isfinite(v) and v != 0]
        median = float(np.median(logs)) if logs else 0.0
        for c in range(cols):
            group = range(c * span, min(S, (c + 1) * span))
            counts[i, c] = sum(bool(bad[i, s]) for s in group)
            firsts = [s for s in group if bad[i, s]] or [s for s in group if values[i, s] == 0]
            if firsts:
                cells[i, c] = values[i, firsts[0]]
                continue
            best, best_dev = None, -1.0
            for s in group:
                v = values[i, s]
                if np.isfinite(v):
                    dev = abs(np.log10(abs(v)) - median)
                    if dev > best_dev:
                        best, best_dev = s, dev
            if best is not None:
                cells[i, c] = values[i, best]
    return cells, counts


@pytest.mark.parametrize("span", [1, 3, 10, 64])
def test_columns_are_the_extreme_step_of_each_group_as_a_naive_loop_finds_it(span):
    rng = np.random.default_rng(span)
    values = 10.0 ** rng.normal(-2, 1, size=(5, 257))
    values[1, 100] = 1e6           # a one-step explosion
    values[2, 40:] = 1e-12         # a collapse
    values[3, 7] = 0.0             # an exact zero
    values[4, ::5] = np.nan        # no value (a detail metric on light steps)
    values[0, 200] = np.inf
    bad = np.isinf(values)
    bad[2, 250] = True             # NaN counts of the tensor: the cell counts it
    values[2, 250] = np.nan
    cells, counts = heatmap.extreme_columns(values, bad, span)
    want_cells, want_counts = _naive(values, bad, span)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(cells, want_cells)  # NaN == NaN here
    assert cells.shape == (5, -(-257 // span))
    assert np.nanmax(cells[1]) == 1e6  # the spike survives any thinning


def test_a_long_run_is_bounded_to_500_columns_and_keeps_the_spike_and_the_nan():
    class Long:  # the read API heatmap() uses, for 5000 recorded steps
        name, world_size = "long", 1

        def history(self, metric, rank=None):
            steps = np.arange(5000)
            data = {"fc1": np.full(5000, 0.1), "fc2": np.full(5000, 0.01)}
            if metric == "grad_norm":
                data["fc1"][3333] = 1e4
                data["fc2"][4000] = np.nan
            if metric == "grad_nan":
                data = {"fc1": np.zeros(5000), "fc2": (steps == 4000).astype(float)}
            elif metric in ("grad_posinf", "grad_neginf"):
                data = {"fc1": np.zeros(5000), "fc2": np.zeros(5000)}
            return pd.DataFrame(data, index=pd.Index(steps, name="step"))

    msg, buffers = heatmap.heatmap(Long(), "grad_norm", None, "t:1")
    validate(msg)
    values, nonfinite = unpack(msg["values"], buffers), unpack(msg["nonfinite"], buffers)
    steps = unpack(msg["steps"], buffers)
    assert msg["step_span"] == 10 and msg["total_steps"] == 5000 and msg["max_columns"] == 500
    assert values.shape == (2, 500) and len(steps) == 500 and steps[333] == 3330
    assert values[0, 333] == 1e4 and np.count_nonzero(values[0] != 0.1) == 1
    assert nonfinite[1, 400] == 1 and nonfinite.sum() == 1 and msg["rank"] is None

    # a panel 100 pixels wide asks for 100 columns: still the spike and the NaN
    msg, buffers = heatmap.heatmap(Long(), "grad_norm", None, "t:2", max_columns=100)
    values, nonfinite = unpack(msg["values"], buffers), unpack(msg["nonfinite"], buffers)
    assert msg["step_span"] == 50 and values.shape == (2, 100) and msg["max_columns"] == 100
    assert values[0, 66] == 1e4 and nonfinite[1, 80] == 1 and nonfinite.sum() == 1


def _watched(nan_at: int | None, steps: int = 12) -> gs.Watcher:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = gs.watch(model, optimizer=opt, name="live", on_nonfinite="skip")
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(8, 6, generator=gen)
        if step == nan_at:
            x[0, 0] = float("nan")
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return w


@pytest.mark.filterwarnings("ignore::gradsight.GradsightWarning")
def test_a_live_watcher_s_nan_step_is_flagged_and_a_healthy_one_is_not():
    w = _watched(nan_at=5)
    try:
        msg, buffers = heatmap.heatmap(w, "grad_norm")
        validate(msg)
        hist = w.history("grad_norm")
        assert msg["layers"] == list(hist.columns) and msg["step_span"] == 1
        nonfinite = unpack(msg["nonfinite"], buffers)
        flagged = {int(s) for s in unpack(msg["steps"], buffers)[np.flatnonzero(nonfinite.any(axis=0))]}
        assert flagged == {5}
        np.testing.assert_array_equal(unpack(msg["values"], buffers), hist.to_numpy().T)
    finally:
        w.close()
    healthy = _watched(nan_at=None)
    try:
        msg, buffers = heatmap.heatmap(healthy, "grad_norm")
        assert not unpack(msg["nonfinite"], buffers).any()
        values = unpack(msg["values"], buffers)
        assert np.isfinite(values).all() and (values > 0).all()
    finally:
        healthy.close()
