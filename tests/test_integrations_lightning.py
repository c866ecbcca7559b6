"""The Lightning callback with a real Trainer: faults named, healthy runs silent, bit-identical."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import gradsight as gs

pl = pytest.importorskip("pytorch_lightning")
from gradsight.integrations.lightning import GradsightCallback  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self, dead: bool = False, nan_at: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        if dead:
            with torch.no_grad():
                self.net[0].bias.fill_(-10.0)
        self.nan_at = nan_at
        self.losses: list[float] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.global_step == self.nan_at:
            x = x.clone()
            x[0, 0] = float("nan")
        loss = ((self(x) - y) ** 2).mean()
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 8, generator=g), torch.randn(n, 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def _fit(module, callbacks=(), steps=6, **trainer_kwargs):
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                         **trainer_kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="pytorch_lightning")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, _data())
    return trainer


def test_healthy_run_is_silent_and_bit_identical():
    a, b = Tiny(), Tiny()
    _fit(a)
    cb = GradsightCallback()
    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.GradsightWarning)
        _fit(b, [cb])
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    w = cb.watcher
    assert w.closed  # teardown removed the hooks
    assert sum(len(m._forward_hooks) for m in b.modules()) == 0
    assert w.findings().empty
    steps = w.steps()
    assert list(steps["step"]) == list(range(6))
    assert steps["loss"].tolist() == pytest.approx(b.losses)  # the training step's loss
    assert steps["lr"].eq(0.05).all() and steps["optimizer_stepped"].eq(1).all()


def test_accumulation_closes_one_step_per_optimizer_step():
    m = Tiny()
    cb = GradsightCallback()
    _fit(m, [cb], steps=3, accumulate_grad_batches=2)
    steps = cb.watcher.steps()
    assert len(steps) == 3  # 6 micro-batches, 3 optimizer steps
    expected = [sum(m.losses[i:i + 2]) / 2 for i in range(0, 6, 2)]
    assert steps["loss"].tolist() == pytest.approx(expected, rel=1e-5)


def test_planted_nan_and_dead_layer_are_named():
    cb = GradsightCallback(thresholds=gs.Thresholds(dead_window=4))
    _fit(Tiny(dead=True, nan_at=5), [cb], steps=7)
    f = cb.watcher.findings()
    dead = f[f["kind"] == "dead_units"]
    assert set(dead["layer"]) == {"net.1"}
    nan = f[f["kind"] == "nan_origin"]
    assert not nan.empty and nan["step"].min() == 5
    assert nan["layer"].iloc[0] == ""  # the NaN came in with the batch: the model's own input


def test_raise_stops_fit_and_bf16_mixed_runs():
    cb = GradsightCallback(on_nonfinite="raise")
    with pytest.raises(gs.NonFiniteError) as info:
        _fit(Tiny(nan_at=2), [cb], steps=5)
    assert (info.value.layer, info.value.step) == ("net.0", 2)
    cb = GradsightCallback()
    _fit(Tiny(), [cb], steps=3, precision="bf16-mixed")
    layers = cb.watcher.layers().set_index("layer")
    assert layers.loc["net.0", "dtype"] == "bfloat16"
    assert cb.watcher.findings().empty or "nan_origin" not in set(cb.watcher.findings()["kind"])


def test_record_passes_through_to_a_recording(tmp_path):
    cb = GradsightCallback(record=tmp_path / "run")
    m = Tiny()
    _fit(m, [cb], steps=4)
    rec = gs.open(tmp_path / "run")
    assert list(rec.steps()["step"]) == [0, 1, 2, 3]
    assert rec.steps()["loss"].tolist() == pytest.approx(m.losses)
    assert rec.layer_names == cb.watcher.layer_names
