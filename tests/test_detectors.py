"""Detectors on models with known faults: the right kind at the right layer, nothing on the
healthy layers, and no alarm at all on healthy models (issue 3)."""

from __future__ import annotations

import functools

import faulty_models as fm
import numpy as np
import pandas as pd
import pytest
import torch
from faulty_models import one_thread  # noqa: F401 - the fixture

from gradsight.detectors import FINDING_COLUMNS, Thresholds

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def scenario(name: str, **kwargs) -> fm.Run:
    return getattr(fm, name)(**kwargs)


def serious(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.severity.isin(["warning", "error"])]


def rows(run: fm.Run, kind: str) -> pd.DataFrame:
    f = run.findings()
    return f[f.kind == kind]


# --- healthy models: no false alarms -------------------------------------------------------

@pytest.mark.parametrize("name", ["healthy_mlp", "healthy_cnn", "healthy_transformer"])
def test_healthy_models_raise_nothing(name):
    run = scenario(name)
    assert run.watcher.step_count == 50
    assert run.losses[-1] < run.losses[0]  # it really trains: a model that learns, not a frozen one
    f = run.findings()
    assert serious(f).empty, f"false alarm on {name}:\n{f[['step', 'layer', 'kind', 'message']]}"
    assert run.warnings == []


# --- the contract ------------------------------------------------------------------------------

def test_findings_frame_contract():
    f = scenario("deep_sigmoid").findings()
    assert list(f.columns[:len(FINDING_COLUMNS)]) == FINDING_COLUMNS
    assert str(f.step.dtype) == "int64" and str(f["count"].dtype) == "int64"
    assert f.severity.isin(["info", "warning", "error"]).all()
    assert f.phase.isin(["forward", "backward", ""]).all()
    assert (f.last_step >= f.step).all() and (f["count"] >= 1).all()
    empty = scenario("healthy_mlp").findings()
    assert list(empty.columns[:len(FINDING_COLUMNS)]) == FINDING_COLUMNS and empty.empty


def test_an_episode_is_one_row_with_a_count():
    f = rows(scenario("large_init"), "exploding_gradient")
    assert f.layer.is_unique  # 20 steps of the same fault on a layer: one row each, not 20
    first = f.iloc[0]
    assert first.step == 0 and first.last_step == 19 and first["count"] == 20


# --- gradient scale ----------------------------------------------------------------------------

def test_deep_sigmoid_mlp_vanishing_gradient_at_the_input_layers():
    run = scenario("deep_sigmoid")
    f = run.findings()
    assert set(f.kind) == {"vanishing_gradient"}
    flagged = set(f.layer)
    assert "0" in flagged  # the first Linear, 16 sigmoids from the output
    assert not flagged & {"28", "30", "32"}  # the layers next to the output still learn
    assert all(int(name) < 28 for name in flagged)
    msg = f[f.layer == "0"].message.iloc[0]
    assert "weight norm" in msg and "neighbouring" in msg and "e-1" in msg  # the numbers are there
    assert (f.value < 1e-4).all() and (f.threshold == 1e-4).all()
    assert len(run.warnings) == 1 and "vanishing_gradient" in run.warnings[0]  # one warning, not twelve
    assert "more layer" in run.warnings[0]


def test_large_init_exploding_gradient_on_the_large_branch_only():
    # issue 10 changed this: one cause is one row, naming the most upstream layer
    run = scenario("large_init")
    f = run.findings()
    assert set(f.kind) == {"exploding_gradient"} and len(f) == 1
    row = f.iloc[0]
    assert row.layer == "big.0" and set(row.affected) <= {"big.0", "big.2", "big.4"}
    assert row.value > Thresholds().exploding_ratio and row.status == "confirmed"
    assert "x the weight norm" in row.message
    assert len(run.warnings) == 1


def test_diverging_learning_rate_warns_before_the_first_nan():
    run = scenario("diverging_lr")
    f = run.findings()
    nan = f[f.kind == "nan_origin"]
    boom = f[f.kind == "exploding_gradient"]
    assert len(nan) == 1 and len(boom) == 1
    assert boom.layer.iloc[0] == ""  # the whole model: the learning rate is global
    assert boom.step.iloc[0] < nan.step.iloc[0]
    assert boom.last_step.iloc[0] < nan.step.iloc[0]  # confirmed strictly before the NaN step
    assert "diverging" in boom.message.iloc[0]
    kinds = [w.split("] ")[1].split(" at ")[0] for w in run.warnings]
    assert kinds == ["exploding_gradient", "nan_origin"]  # the early warning comes first
    assert nan.phase.iloc[0] == "forward" and "overflow" in nan.message.iloc[0]


def test_tanh_pinned_at_its_limits_is_saturation():
    run = scenario("saturated_tanh")
    f = run.findings()
    sat = f[f.kind == "saturation"]
    assert list(sat.layer) == ["1"] and sat.step.iloc[0] == 0  # measured on detail steps 0 and 10
    assert sat.value.iloc[0] >= 0.5 and "Tanh" in sat.message.iloc[0]
    assert not f.layer.isin(["3"]).any()  # the ReLU after it is fine


# --- dead units ------------------------------------------------------------------------------------

def test_relu_after_large_negative_bias_has_dead_units():
    run = scenario("dead_relu")
    f = run.findings()
    assert list(f.kind) == ["dead_units"] and list(f.layer) == ["3"]  # not the healthy ReLU '1'
    row = f.iloc[0]
    # issue 10: suspected from the first step, confirmed when the window filled
    assert row.step == 0 and row.last_step == 29 and row.value == 1.0
    assert (row.status, row.severity) == ("confirmed", "warning")
    assert "32 of 32 units (100%)" in row.message and "'2' (Linear)" in row.message
    assert "in the last 20 step(s)" in row.message


def test_reviving_units_end_the_episode():
    run = fm.dead_relu(steps=40, revive_at=30)
    f = rows(run, "dead_units")
    assert len(f) == 1
    assert f.last_step.iloc[0] == 29  # units fire again from step 30 on


def test_dead_window_is_a_threshold():
    run = fm.dead_relu(steps=10)
    f = rows(run, "dead_units")  # 10 steps < the default 20: suspected (issue 10), not confirmed
    assert list(zip(f.status, f.severity, strict=True)) == [("suspected", "info")] and run.warnings == []
    model, opt, batch = _dead_model()
    run = fm.train(model, opt, batch, 10, torch.nn.functional.mse_loss, watch={"thresholds": {"dead_window": 4}})
    f = run.findings()
    assert list(f.layer[f.kind == "dead_units"]) == ["3"] and f.status.iloc[0] == "confirmed"


def _dead_model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                            torch.nn.Linear(32, 4))
    with torch.no_grad():
        m[2].bias.fill_(-10.0)
    return m, torch.optim.SGD(m.parameters(), lr=0.01), fm.regression(d=16, k=4, scale=1.0)


# --- NaN origin ------------------------------------------------------------------------------------

def test_log_of_negative_is_a_forward_nan_origin():
    run = scenario("forward_nan")
    f = run.findings()
    assert len(f) == 1  # exactly one origin; later NaN steps (NaN parameters) are not new origins
    row = f.iloc[0]
    assert (row.kind, row.layer, row.phase, row.severity, row.step) == ("nan_origin", "1", "forward", "error", 0)
    assert "LogFeatures" in row.message and "finite inputs" in row.message
    assert 'nan_trace="op"' in row.hint
    assert len(run.warnings) == 1 and "nan_origin" in run.warnings[0]


def test_sqrt_inside_where_is_a_backward_nan_origin():
    run = scenario("backward_nan")
    f = run.findings()
    assert len(f) == 1
    row = f.iloc[0]
    assert (row.kind, row.layer, row.phase, row.step) == ("nan_origin", "1", "backward", 0)
    assert "finite output gradient" in row.message and "'0' (Linear)" in row.message
    assert not (run.findings().layer == "0").any()  # the layer whose gradient went NaN is downstream


def test_nan_made_by_the_loss_is_outside_the_model():
    run = fm.nan_in_loss(nan_trace="module")
    f = run.findings()
    assert list(f.kind) == ["nan_origin"] and list(f.layer) == [""]
    assert "loss" in f.message.iloc[0]


# --- precision -------------------------------------------------------------------------------------

def test_bf16_tiny_gradients_underflow():
    run = scenario("bf16_underflow")
    f = run.findings()
    under = f[f.kind == "underflow"]
    assert "2" in set(under.layer)
    assert set(under.layer) <= {"0", "1", "2"}  # only layers before the gradient shrinker
    assert not f.layer.isin(["3", "4", "5", ""]).any()  # the healthy layers have nothing at all
    assert "bfloat16" in under.message.iloc[0] and "subnormal" in under.message.iloc[0]
    assert not (f.kind == "nan_origin").any()


def test_gradscaler_calibration_skips_are_info_not_nan_origin():
    run = scenario("grad_scaler")
    f = run.findings()
    assert list(f.kind) == ["skipped_step"]
    row = f.iloc[0]
    assert row.severity == "info" and row.layer == "" and row.step == 0 and row["count"] >= 1
    assert row["count"] < Thresholds().skip_run
    assert run.warnings == []


@pytest.mark.parametrize("watch_optimizer", [True, False])
def test_a_run_of_skips_escalates(watch_optimizer):
    run = fm.grad_scaler(always_inf=True, watch_optimizer=watch_optimizer)
    f = run.findings()
    assert set(f.kind) == {"skipped_step"}, f[["step", "kind", "layer"]]  # never a nan_origin error
    row = f.iloc[0]
    assert row.severity == "warning" and row["count"] >= Thresholds().skip_run
    assert "'2' (OverflowingGrad)" in row.message  # where the Inf came from
    assert len(run.warnings) == 1 and "skipped_step" in run.warnings[0]


# --- clipping --------------------------------------------------------------------------------------

def test_clipping_far_below_the_gradient_norm_is_a_warning():
    run = scenario("aggressive_clipping")
    f = run.findings()
    assert list(f.kind) == ["clipping"] and list(f.layer) == [""]
    row = f.iloc[0]
    assert row.severity == "warning" and row.value > 1000
    assert "to 1.00e-03" in row.message and "dominated by '6' (Linear)" in row.message


def test_moderate_clipping_is_info():
    run = fm.aggressive_clipping(max_norm=1.0)
    f = rows(run, "clipping")
    assert len(f) == 1 and f.severity.iloc[0] == "info" and 2 <= f.value.iloc[0] < 100
    assert run.warnings == []


def test_huge_but_finite_gradients_are_not_a_nan_origin():
    # gradients ~1e30 (as under a very large loss scale): their float32 sum of squares overflows,
    # but no value is Inf/NaN, so there is no origin to report
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    run = fm.train(model, opt, fm.regression(d=16, k=4), 3, lambda out, y: torch.nn.functional.mse_loss(out, y) * 1e30)
    rec = run.watcher.last_record()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert np.isfinite(rec.param_grad_sumsq).all()  # huge (saturated), not Inf
    assert rows(run, "nan_origin").empty
