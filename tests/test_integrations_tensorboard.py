"""TensorBoard export read back with TensorBoard's own EventAccumulator; NaN/Inf never crash it."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _read(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def _run(w_kwargs, steps=4, nan_at=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt, histogram_every=2, **w_kwargs)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gs.GradsightWarning)
        for s in range(steps):
            opt.zero_grad()
            xb = x.clone()
            if s == nan_at:
                xb[0, 0] = float("inf")
            loss = ((model(xb) - y) ** 2).mean()
            loss.backward()
            opt.step()
            w.step(loss)
            losses.append(loss.item())
    return w, losses


def test_export_scalars_histograms_and_nonfinite_counts(tmp_path):
    w, losses = _run({}, steps=5, nan_at=3)
    assert w.to_tensorboard(tmp_path) == 5
    acc = _read(tmp_path)
    tags = acc.Tags()
    loss = acc.Scalars("step/loss")
    assert [e.step for e in loss] == list(range(5))
    got = [e.value for e in loss]
    assert got[:3] == pytest.approx(losses[:3]) and all(math.isnan(v) for v in got[3:]) == all(
        math.isnan(v) for v in losses[3:])
    assert [e.value for e in acc.Scalars("step/lr")] == pytest.approx([0.1] * 5)
    gn = {e.step: e.value for e in acc.Scalars("grad_norm/0")}
    assert gn[0] == pytest.approx(float(w.history("grad_norm")["0"].iloc[0]), rel=1e-6)
    # the Inf at step 3 is counted, not dropped: the first Linear's output holds +Inf values
    bad = {e.step: e.value for e in acc.Scalars("nonfinite/act/0")}
    assert bad[0] == 0 and bad[3] > 0
    # pre-binned histograms on histogram steps (0, 2, 4), counts matching gradsight's own
    assert "grad/0" in tags["histograms"] and "weight/0" in tags["histograms"]
    hist = acc.Histograms("weight/0")
    assert [e.step for e in hist] == [0, 2]  # at step 4 every weight is NaN (the Inf step updated them):
    assert {e.step: e.value for e in acc.Scalars("nonfinite/weight/0")} == {0: 0, 2: 0, 4: 40}  # 32 + 8 bias
    h0 = w.histogram("0", of="weight", step=0)
    assert hist[0].histogram_value.num == h0.total
    assert np.allclose(hist[0].histogram_value.bucket_limit, h0.edges[1:])
    w.close()


def test_streaming_writes_every_step_with_its_loss(tmp_path):
    w, losses = _run({"tensorboard": tmp_path / "live"}, steps=3)
    w.close()
    acc = _read(tmp_path / "live")
    loss = acc.Scalars("step/loss")
    assert [e.step for e in loss] == [0, 1, 2]  # once per step: written when the loss arrives
    assert [e.value for e in loss] == pytest.approx(losses)
    assert len(acc.Scalars("grad_norm/2")) == 3


def test_all_nan_histogram_does_not_crash(tmp_path):
    """TensorBoard's add_histogram raises on all-NaN input; the export must not."""
    w, _ = _run({}, steps=3, nan_at=0)
    w.to_tensorboard(tmp_path)
    acc = _read(tmp_path)
    assert {e.step for e in acc.Scalars("nonfinite/grad/2")} == {0, 1, 2}
    w.close()


def test_a_recording_exports_the_same(tmp_path):
    w, losses = _run({"record": tmp_path / "run"}, steps=3)
    w.close()
    rec = gs.open(tmp_path / "run")
    assert rec.to_tensorboard(tmp_path / "tb") == 3
    acc = _read(tmp_path / "tb")
    assert [e.value for e in acc.Scalars("step/loss")] == pytest.approx(losses)
    assert "grad/0" in acc.Tags()["histograms"]
