"""Findings people can trust on real models (issue 10): evidence from the first step, one
row per cause, no false alarms on standard architectures, and the faults that training
really produces. Each numbered case of the issue has a model that really has it."""

from __future__ import annotations

import functools
import warnings

import faulty_models as fm
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from faulty_models import one_thread  # noqa: F401 - the fixture
from torch import nn

from gradsight.detectors import Thresholds
from gradsight.widgets.summary_html import watcher_html

PASS_THROUGH = ("Dropout", "Identity", "ReLU", "GELU", "Sequential", "Block", "ModuleList")


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def scenario(name: str, **kwargs) -> fm.Run:
    return getattr(fm, name)(**kwargs)


def kind(run: fm.Run, k: str, all: bool = False) -> pd.DataFrame:  # noqa: A002
    f = run.watcher.findings(all=all)
    return f[f.kind == k]


def type_of(run: fm.Run, layer: str) -> str:
    return type(run.model.get_submodule(layer)).__name__ if layer else ""


# --- zero false alarms ---------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("name", list(fm.HEALTHY))
def test_healthy_architectures_raise_nothing_confirmed_or_suspected(name, optimizer):
    run = fm.healthy(name, optimizer)
    f = run.watcher.findings(all=True)  # dismissed suspicions count too
    assert f.empty, f"false alarm on {name}/{optimizer}:\n{f[['step', 'layer', 'kind', 'status', 'message']]}"
    assert run.warnings == []
    assert np.isfinite(run.losses).all()


# --- 1. short runs: evidence from the first step --------------------------------------------------

def test_explosion_through_depth_is_confirmed_in_three_steps_as_one_row():
    run = scenario("deep_relu_3he")
    f = run.findings()
    assert list(f.kind) == ["exploding_gradient"], f[["kind", "layer", "status"]]
    row = f.iloc[0]
    assert (row.step, row.layer, row.status, row.severity) == (0, "0", "confirmed", "warning")
    linears = [n for n, m in run.model.named_children() if isinstance(m, nn.Linear)]
    assert row.affected[0] == "0" and set(row.affected) <= set(linears) and len(row.affected) >= 8
    assert "more layer(s) after it" in row.message
    assert len(run.warnings) == 1 and "exploding_gradient" in run.warnings[0]
    html = watcher_html(run.watcher)
    assert "No findings" not in html and "0 findings" not in html and "1 warning" in html


def test_every_unit_silent_over_hundreds_of_samples_is_dead_at_once():
    run = scenario("dead_cnn")
    f = run.findings()
    assert list(zip(f.kind, f.layer, f.status, strict=True)) == [("dead_units", "relu2", "confirmed")]
    assert f.step.iloc[0] == 0 and f.value.iloc[0] == 1.0 and "'conv2' (Conv2d)" in f.message.iloc[0]
    assert not (f.layer == "relu1").any()


def test_building_evidence_is_suspected_and_the_badge_says_so():
    run = fm.dead_relu(steps=3)  # batch 64 < dead_samples: evidence must build over steps
    f = run.findings()
    assert list(zip(f.kind, f.layer, f.status, f.severity, strict=True)) == [("dead_units", "3", "suspected", "info")]
    assert "Suspected" in f.message.iloc[0] and "3 of the 20 steps" in f.message.iloc[0]
    assert run.warnings == []  # a suspicion is no warning yet
    html = watcher_html(run.watcher)
    assert "No findings" not in html and "0 findings" not in html and "1 suspected" in html


def test_a_suspicion_that_stops_holding_is_dismissed_but_kept():
    run = fm.dead_relu(steps=8, revive_at=4)
    assert kind(run, "dead_units").empty
    kept = kind(run, "dead_units", all=True)
    assert list(kept.status) == ["dismissed"] and kept.last_step.iloc[0] == 3


def test_suspected_then_confirmed_is_one_episode_and_one_warning():
    run = fm.dead_relu(steps=25)
    f = kind(run, "dead_units")
    assert len(f) == 1 and f.status.iloc[0] == "confirmed" and f.step.iloc[0] == 0 and f["count"].iloc[0] == 25
    assert len(run.warnings) == 1


# --- 2. attention query/key gradients are small by construction -----------------------------------

def test_bert_query_key_are_not_vanishing():
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=256, num_labels=3)
    model = BertForSequenceClassification(cfg)

    def batch(gen):
        x = torch.randint(0, 1000, (8, 16), generator=gen)
        return x, x[:, 0] % 3

    run = fm.train(model, torch.optim.AdamW(model.parameters(), lr=3e-4), batch, 6,
                   lambda out, y: F.cross_entropy(out.logits, y))
    f = run.watcher.findings(all=True)
    assert f.empty, f[["layer", "kind", "status", "value"]]


def test_query_key_still_vanish_when_they_really_do():
    # a vanishing ratio 1000x below the attention threshold is still reported
    from gradsight.detectors.roles import ROLES, layer_roles

    roles = layer_roles(("", "attn.query", "attn.key", "attn.value", "emb", "ln", "b"),
                        ("M", "Linear", "Linear", "Linear", "Embedding", "LayerNorm", "Bias"),
                        np.array([1, 2, 3, 4, 5, 6]), ("q.weight", "k.weight", "v.weight", "e.weight", "ln.weight",
                                                       "b.bias"))
    assert [ROLES[r] for r in roles] == ["weight", "attention_qk", "attention_qk", "weight", "embedding", "norm",
                                         "bias"]
    th = Thresholds()
    assert th.vanishing_ratio_attention < th.vanishing_ratio and th.vanishing_ratio_norm < th.vanishing_ratio


# --- 3. total fp16 flush ---------------------------------------------------------------------------

def test_total_fp16_flush_is_one_underflow_row():
    run = scenario("fp16_flush")
    w = run.watcher
    rec = w.last_record()
    assert (rec.param_grad_sumsq[rec.param_seen[:, 1]] == 0).all()  # the fault is real: every gradient is 0
    f = run.findings()
    assert list(f.kind) == ["underflow"], f[["kind", "layer"]]
    row = f.iloc[0]
    assert row.layer == "2" and row.severity == "warning" and row.status == "confirmed" and row["count"] == 3
    assert "exactly zero" in row.message and "float16" in row.message
    # 7. one row for the whole model, naming no pass-through layer and listing none
    assert all(type_of(run, n) not in PASS_THROUGH for n in row.affected)
    assert {"0", "2", "1.0.fc", "1.1.fc"} <= set(row.affected)
    assert len(run.warnings) == 1


def test_a_loss_scaled_into_range_does_not_flush():
    run = fm.fp16_flush(factor=1.0)
    assert run.findings().empty


# --- 4. pass-through modules are never a NaN origin -----------------------------------------------

def test_dropout_is_not_a_nan_origin_once_weights_are_nan():
    torch.manual_seed(0)
    model = fm.HFCausalLM(dropout=0.0)

    def loss_fn(out, y):  # step 2's loss takes the sqrt of negative numbers: NaN gradients, NaN weights
        loss = fm._seq_ce(out, y)
        return torch.sqrt(loss - 100.0) if loss_fn.step == 2 else loss

    def on_step(step, m):
        loss_fn.step = step

    run = fm.train(model, torch.optim.SGD(model.parameters(), lr=0.01), fm._token_batch(512), 8, loss_fn,
                   on_step=on_step)
    assert not all(torch.isfinite(p).all() for p in model.parameters())
    f = run.findings()
    nan = f[f.kind == "nan_origin"]
    assert len(nan) == 1 and nan.step.iloc[0] == 2, nan[["step", "layer", "message"]]
    assert all(type_of(run, n.removeprefix("")) not in PASS_THROUGH for n in f.layer if n)


# --- 6. float32 overflow: huge but finite stays finite ---------------------------------------------

class Huge(nn.Module):
    def forward(self, x):
        return x * 1e20


def test_huge_but_finite_values_stay_finite_and_quiet():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), Huge(), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy overflow warnings must not reach the user
        run = fm.train(model, opt, fm.regression(d=16, k=4), 3,
                       lambda out, y: (out * 1e-20 - y).pow(2).mean() * 1e25)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    w = run.watcher
    assert np.isfinite(w.steps().total_grad_norm).all() and (w.steps().total_grad_norm > 1e19).all()
    lay = w.layers().set_index("layer")
    assert np.isfinite(lay.loc["1", "act_norm"]) and lay.loc["1", "act_norm"] > 1e19
    assert np.isfinite(lay.loc["0", "grad_norm"]) and lay.loc["0", "grad_norm"] > 1e19
    assert kind(run, "nan_origin").empty


# --- 7. one row per cause, divergence first --------------------------------------------------------

def test_diverging_adamw_run_warns_divergence_first_with_scale_findings_folded_in():
    torch.manual_seed(0)
    model = fm.he_mlp()
    run = fm.train(model, torch.optim.AdamW(model.parameters(), lr=1.0), fm.regression(), 15, F.mse_loss)
    f = run.findings()
    first = f.iloc[0]
    assert (first.kind, first.layer) == ("exploding_gradient", "")  # the divergence, on the whole model
    assert "diverging" in first.message and len(first.affected) >= 1
    scale = f[f.kind.isin(["exploding_gradient", "vanishing_gradient"]) & (f.layer != "")]
    assert (scale.step > first.last_step).all() or scale.empty  # nothing that began with it is separate
    assert "diverging" in run.warnings[0]


def test_large_init_is_one_row():
    f = kind(scenario("large_init"), "exploding_gradient")
    assert len(f) == 1 and f.layer.iloc[0] == "big.0"


# --- new kinds --------------------------------------------------------------------------------------

def test_inf_loss_with_finite_gradients_is_nonfinite_loss():
    torch.manual_seed(0)
    model = fm.he_mlp()

    def loss_fn(out, y):  # vocabulary masking with -inf logits under label smoothing: Inf loss, finite grads
        masked = out.masked_fill(torch.arange(out.shape[1]) >= 8, float("-inf"))
        return F.cross_entropy(masked, y.clamp_max(7), label_smoothing=0.1)

    run = fm.train(model, torch.optim.SGD(model.parameters(), lr=0.01), fm.classification(), 4, loss_fn)
    assert all(np.isinf(run.losses)) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    f = run.findings()
    assert list(f.kind) == ["nonfinite_loss"] and f["count"].iloc[0] == 4 and f.step.iloc[0] == 0
    assert "+Inf" in f.message.iloc[0] and f.severity.iloc[0] == "warning"


def test_one_bad_batch_is_a_loss_spike_naming_the_layers_that_jumped():
    torch.manual_seed(0)
    model = fm.he_mlp()
    base = fm.classification()

    def batch(gen):
        x, y = base(gen)
        if batch.step == 30:
            x = x * 30.0  # a corrupted batch
        batch.step += 1
        return x, y

    batch.step = 0
    run = fm.train(model, torch.optim.SGD(model.parameters(), lr=0.01), batch, 35, F.cross_entropy)
    f = run.findings()
    assert list(f.kind) == ["loss_spike"], f[["kind", "step", "message"]]
    row = f.iloc[0]
    assert row.step == 30 and row["count"] == 1 and row.value > Thresholds().loss_spike
    assert row.layer in {"0", "2", "4", "6"} and "jumped" in row.message and row.layer in row.affected


def test_loss_detectors_work_without_optimizer_too():
    torch.manual_seed(0)
    model = fm.he_mlp()
    run = fm.train(model, torch.optim.SGD(model.parameters(), lr=0.01), fm.classification(), 3,
                   lambda out, y: F.cross_entropy(out, y) * float("inf"), watch_optimizer=False)
    assert "nonfinite_loss" not in set(run.findings().kind)  # Inf gradients too: that is nan_origin's
    assert "nan_origin" in set(run.findings().kind)


# --- 5. a weight set to Inf by hand -----------------------------------------------------------------

@pytest.mark.parametrize("how", ["edit", "load_state_dict"])
def test_a_weight_set_to_inf_by_hand_is_not_blamed_on_the_layer(how):
    torch.manual_seed(0)
    model = fm.he_mlp()

    def on_step(step, m):
        if step == 3:
            if how == "edit":
                with torch.no_grad():
                    m[2].weight[0, 0] = float("inf")
            else:
                state = {k: v.clone() for k, v in m.state_dict().items()}
                state["2.weight"][0, 0] = float("inf")
                m.load_state_dict(state)

    run = fm.train(model, torch.optim.SGD(model.parameters(), lr=0.01), fm.classification(), 6, F.cross_entropy,
                   on_step=on_step)
    nan = kind(run, "nan_origin")
    assert len(nan) == 1, nan[["step", "layer", "message"]]
    row = nan.iloc[0]
    assert (row.step, row.layer) == (3, "2")
    assert "'2.weight'" in row.message and "already non-finite" in row.message
    assert "finite parameters" not in row.message and "load_state_dict" in row.hint
