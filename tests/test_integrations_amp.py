"""AMP with a real ``torch.amp.GradScaler("cpu")``: the ``grad_scale`` step column is the scale each
step's backward used, every gradient statistic is unscaled (equal to a run without a scaler), and
a step the scaler skips (Inf gradients) is reported as skipped — with ``scaler=`` in a plain loop,
and through the Lightning callback, which finds Lightning's scaler itself.

A float32 model makes the comparison exact: multiplying a loss by a power of two scales every
gradient by that power exactly, so the scaled and the unscaled run train identically and their
statistics must agree to the last bits (up to the order of the float64 reduction).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs

GRAD_METRICS = ("param_grad_norm", "grad_norm", "grad_max", "grad_std")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))


def _data(steps):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(steps)]


def _run(steps=8, scaler=None, overflow_at=None):
    """Train with or without a scaler; ``overflow_at``: that step's loss is 1e36, finite, but its
    gradients times the scale overflow float32 (a step GradScaler must skip)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, scaler=scaler, histogram_every=1)
    scales = []
    for step, (x, y) in enumerate(_data(steps)):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        if step == overflow_at:
            loss = loss * 1e36
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scales.append(scaler.get_scale())
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        w.step(loss)
    w.close()
    return model, w, scales


def test_scaler_column_is_the_scale_and_statistics_are_unscaled():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=2)
    m_scaled, w_scaled, scales = _run(scaler=scaler)
    m_plain, w_plain, _ = _run()
    for p, q in zip(m_scaled.parameters(), m_plain.parameters(), strict=True):
        assert torch.equal(p, q)  # the premise: power-of-two scaling changed nothing in training
    steps = w_scaled.steps()
    assert len(set(scales)) > 2  # the scale grew during the run: the column must follow it
    assert steps["grad_scale"].tolist() == scales
    assert w_plain.steps()["grad_scale"].eq(1.0).all()
    assert steps["optimizer_stepped"].eq(1).all()
    for metric in GRAD_METRICS:
        a, b = w_scaled.history(metric), w_plain.history(metric)
        assert np.isfinite(b.to_numpy()).any()
        np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6, err_msg=metric)
    np.testing.assert_allclose(steps["total_grad_norm"], w_plain.steps()["total_grad_norm"], rtol=1e-6)
    # histograms are on the unscaled gradients too
    h_scaled, h_plain = w_scaled.histogram("2", "grad", step=4), w_plain.histogram("2", "grad", step=4)
    np.testing.assert_array_equal(h_scaled.counts, h_plain.counts)
    assert w_scaled.findings().empty


def test_a_step_the_scaler_skips_is_reported_as_skipped():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, w, scales = _run(scaler=scaler, overflow_at=3)
    steps = w.steps().set_index("step")
    assert steps.loc[3, "optimizer_stepped"] == 0
    assert steps.drop(index=3)["optimizer_stepped"].eq(1).all()
    assert steps["grad_scale"].tolist() == scales and scales[4] == scales[3] / 2  # the scaler backed off
    f = w.findings()
    assert list(f["kind"]) == ["skipped_step"] and f["step"].iloc[0] == 3 and f["severity"].iloc[0] == "info"
    assert not [c for c in caught if issubclass(c.category, gs.GradsightWarning)]  # a calibration skip: no alarm


# --- Lightning under precision="16-mixed" -------------------------------------------------------

pl = pytest.importorskip("pytorch_lightning")
from pytorch_lightning.plugins import MixedPrecision  # noqa: E402

from gradsight.integrations.lightning import GradsightCallback  # noqa: E402


class Probe(pl.Callback):
    """What the optimizer is about to use (Lightning has unscaled by now): per-layer gradient norms,
    and the scale of the step's backward."""

    def __init__(self, scaler):
        self.scaler = scaler
        self.norms: list[dict[str, float]] = []
        self.scales: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.scales.append(self.scaler.get_scale())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        out = {}
        for name, module in pl_module.named_modules():
            grads = [p.grad.double().pow(2).sum() for p in module.parameters(recurse=False) if p.grad is not None]
            if grads:
                out[name] = float(torch.stack(grads).sum().sqrt())
        self.norms.append(out)


class Tiny(pl.LightningModule):
    def __init__(self, overflow_at=None):
        super().__init__()
        self.net = _model()
        self.overflow_at = overflow_at

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x).float(), y)
        return loss * 1e36 if batch_idx == self.overflow_at else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit(module, steps, scaler, callbacks):
    data = torch.utils.data.DataLoader(_data(steps), batch_size=None)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="pytorch_lightning")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, data)
    return trainer


def test_lightning_16_mixed_statistics_are_unscaled_and_skips_reported():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=2)
    probe, cb = Probe(scaler), GradsightCallback(histogram_every=1)
    _fit(Tiny(overflow_at=5), 7, scaler, [cb, probe])
    w = cb.watcher
    steps = w.steps().set_index("step")
    assert steps["grad_scale"].tolist() == probe.scales and len(set(probe.scales)) > 2
    assert steps.loc[5, "optimizer_stepped"] == 0 and steps.drop(index=5)["optimizer_stepped"].eq(1).all()
    assert probe.scales[6] == probe.scales[5] / 2
    norms = w.history("param_grad_norm")
    for step in range(5):  # healthy steps: the gradients the optimizer used, unscaled
        for layer, expected in probe.norms[step].items():
            assert norms.loc[step, layer] == pytest.approx(expected, rel=1e-5), (step, layer)
    f = w.findings()
    assert list(f["kind"]) == ["skipped_step"] and f["step"].iloc[0] == 5
