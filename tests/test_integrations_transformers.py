"""The Hugging Face callback with a real Trainer (CPU, tiny models built from code, no downloads)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gradsight as gs

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from gradsight.integrations.transformers import GradsightCallback  # noqa: E402


class Regressor(nn.Module):
    """A plain module the Trainer can fit: returns {"loss", "logits"}; NaN input at call ``nan_call``."""

    def __init__(self, dead: bool = False, nan_call: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        if dead:
            with torch.no_grad():
                self.net[0].bias.fill_(-10.0)
        self.nan_call = nan_call
        self.calls = 0

    def forward(self, x, labels=None):
        if self.training and self.calls == self.nan_call:
            x = x.clone()
            x[0, 0] = float("nan")
        self.calls += self.training
        out = self.net(x)
        return {"loss": ((out - labels) ** 2).mean(), "logits": out}


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 8, generator=g), torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=32, vocab=64):
        g = torch.Generator().manual_seed(2)
        self.ids = torch.randint(0, vocab, (n, 12), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _tiny_gpt2():
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def _train(model, data, tmp_path, callbacks=(), steps=4, **kw):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], max_steps=steps,
                                          per_device_train_batch_size=8, learning_rate=1e-2, logging_steps=1,
                                          save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0,
                                          dataloader_num_workers=0, **kw)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=list(callbacks))
    trainer.train()
    return trainer


def test_gpt2_healthy_bit_identical_and_silent(tmp_path):
    a, b = _tiny_gpt2(), _tiny_gpt2()
    _train(a, Tokens(), tmp_path / "a")
    cb = GradsightCallback()
    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.GradsightWarning)
        t = _train(b, Tokens(), tmp_path / "b", callbacks=[cb])
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    w = cb.watcher
    assert w.closed and w.findings().empty
    steps = w.steps()
    assert len(steps) == 4 and steps["lr"].notna().all()
    logged = [h["loss"] for h in t.state.log_history if "loss" in h]
    assert steps["loss"].tolist() == pytest.approx(logged, rel=1e-4)
    assert "transformer.h.0.attn" in w.layer_names


def test_accumulation_and_filters(tmp_path):
    cb = GradsightCallback(include="net.*")
    _train(Regressor(), Pairs(), tmp_path, callbacks=[cb], steps=3, gradient_accumulation_steps=2)
    w = cb.watcher
    assert len(w.steps()) == 3 and w.steps()["optimizer_stepped"].eq(1).all()
    assert w.layer_names == ["", "net.0", "net.1", "net.2"]


def test_nan_hidden_from_logs_is_seen_named_and_stops_training(tmp_path):
    cb = GradsightCallback(stop_on_nonfinite=True, thresholds=gs.Thresholds(dead_window=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gs.GradsightWarning)
        t = _train(Regressor(dead=True, nan_call=4), Pairs(), tmp_path, callbacks=[cb], steps=8)
    w = cb.watcher
    assert cb.stopped_at == 4 and t.state.global_step == 5  # stopped right after the bad step
    assert math.isnan(w.steps()["loss"].iloc[4])
    logged = [h["loss"] for h in t.state.log_history if "loss" in h]
    assert all(math.isfinite(v) for v in logged)  # logging_nan_inf_filter hid it from the logs
    f = w.findings()
    nan = f[f["kind"] == "nan_origin"]
    assert nan["step"].min() == 4
    assert set(f[f["kind"] == "dead_units"]["layer"]) == {"net.1"}


def test_record_passes_through_to_a_recording(tmp_path):
    cb = GradsightCallback(record=tmp_path / "run")
    t = _train(Regressor(), Pairs(), tmp_path / "out", callbacks=[cb], steps=3)
    rec = gs.open(tmp_path / "run")
    assert list(rec.steps()["step"]) == [0, 1, 2]
    logged = [h["loss"] for h in t.state.log_history if "loss" in h]
    assert rec.steps()["loss"].tolist() == pytest.approx(logged, rel=1e-4)
