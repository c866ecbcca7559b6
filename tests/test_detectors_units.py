"""Detector building blocks on hand-built records: the episode log, thresholds,
persistence, and the NaN-origin rules in cases a training run rarely isolates."""

from __future__ import annotations

import numpy as np
import pytest

from gradsight.detectors import DetectorEngine, Thresholds
from gradsight.detectors.finding import FindingLog
from gradsight.detectors.streak import Streak
from gradsight.records.fields import N_FIELDS, F
from gradsight.records.step_record import StepRecord

# --- the episode log ---------------------------------------------------------------------------


def test_consecutive_reports_merge_and_a_gap_starts_a_new_episode():
    log = FindingLog()
    for step in range(6):
        log.begin(step)
        if step != 3:  # records are consecutive records (steps 0, 3, 6, ... with every=3)
            log.report("dead_units", "fc", "warning", f"at {step}")
        log.end()
    rows = log.frame()
    assert list(rows.step) == [0, 4] and list(rows.last_step) == [2, 5] and list(rows["count"]) == [3, 2]
    assert rows.message.iloc[0] == "at 2"  # the latest numbers


def test_hold_keeps_an_unmeasured_episode_open():
    log = FindingLog()
    log.begin(0)
    log.report("saturation", "t", "warning", "m")
    log.end()
    log.begin(1)
    log.hold("saturation")
    log.end()
    log.begin(2)
    log.report("saturation", "t", "warning", "m")
    log.end()
    assert len(log.episodes) == 1 and log.episodes[0].count == 2 and log.episodes[0].last_step == 2


def test_live_warnings_once_per_kind_and_layer_grouped_per_step_and_again_on_escalation():
    log = FindingLog()
    log.begin(0)
    log.report("skipped_step", "", "info", "skip")
    for layer in ("a", "b", "c"):
        log.report("dead_units", layer, "warning", f"dead {layer}")
    warned = log.live_warnings(log.end())
    assert len(warned) == 1 and "2 more layer(s): 'b', 'c'" in warned[0].message  # info is not warned
    log.begin(1)
    log.report("skipped_step", "", "warning", "many skips")
    for layer in ("a", "b", "c"):
        log.report("dead_units", layer, "warning", f"dead {layer}")
    warned = log.live_warnings(log.end())
    assert [w.kind for w in warned] == ["skipped_step"]  # the escalation, and no repeat of dead_units


def test_the_log_is_bounded():
    log = FindingLog(max_episodes=10)
    for step in range(100):  # a flapping condition: a new episode every other step
        log.begin(step)
        if step % 2 == 0:
            log.report("clipping", "", "info", "x")
        log.end()
    log.begin(200)
    log.report("nan_origin", "", "error", "boom")
    log.end()
    assert len(log.episodes) == 10 and log.episodes[-1].kind == "nan_origin"


# --- thresholds ------------------------------------------------------------------------------------

def test_thresholds_accept_a_dict_and_reject_bad_values():
    eng = DetectorEngine(layers=("",), thresholds={"dead_window": 3})
    assert eng.thresholds.dead_window == 3 and eng.thresholds.window == Thresholds().window
    with pytest.raises(ValueError, match="dead_windw.*Did you mean 'dead_window'"):
        DetectorEngine(layers=("",), thresholds={"dead_windw": 3})
    with pytest.raises(ValueError, match="dead_fraction is a fraction"):
        Thresholds(dead_fraction=2.0)
    with pytest.raises(ValueError, match="window must be a positive int"):
        Thresholds(window=0)
    with pytest.raises(TypeError, match="Thresholds or a dict"):
        DetectorEngine(layers=("",), thresholds=0.5)


def test_every_threshold_is_documented():
    import inspect

    src = inspect.getsource(Thresholds)
    for name in Thresholds.__dataclass_fields__:
        after = src.split(f"    {name}:", 1)[1]
        assert after.split("\n", 1)[1].lstrip().startswith('"""'), f"{name} has no docstring"


# --- persistence ---------------------------------------------------------------------------------

def test_streak_confirms_dense_and_sparse_signals():
    s = Streak(2)
    on, both = np.array([True, False]), np.array([True, True])
    for step in range(4):
        s.update(step, on, both)
    assert list(s.confirmed(3, 5)) == [False, False]
    s.update(4, on, both)
    assert list(s.confirmed(4, 5)) == [True, False]
    sparse = Streak(1)  # measured every 10 steps: two measurements spanning the window confirm
    sparse.update(0, np.array([True]), np.array([True]))
    sparse.update(5, np.array([False]), np.array([False]))  # unmeasured: keeps the streak
    sparse.update(10, np.array([True]), np.array([True]))
    assert sparse.confirmed(10, 5)[0] and sparse.start[0] == 0


# --- NaN origin rules on hand-built records -------------------------------------------------------

LAYERS = ("", "block", "block.inner", "head")  # block contains inner; head after block
PARAMS = ("block.inner.weight", "head.weight")


def record(step=0, act_nan=(), grad_nan=(), input_bad=(), pgrad_bad=(), param_bad=(), backward=(3, 0, 1, 2),
           sources=None, detail=True) -> StepRecord:
    L, P = len(LAYERS), len(PARAMS)
    act = np.zeros((L, N_FIELDS))
    act[:, F["sumsq"]] = 1.0
    grad = act.copy()
    for i in act_nan:
        act[i, F["nan"]], act[i, F["sumsq"]] = 3, np.nan
    for i in grad_nan:
        grad[i, F["nan"]], grad[i, F["sumsq"]] = 3, np.nan
    finite = np.ones(L)
    finite[list(input_bad)] = 0.0
    pgrad = np.ones(P)
    pgrad[list(pgrad_bad)] = np.nan
    psq = np.ones(P)
    psq[list(param_bad)] = np.nan
    seen = np.ones((P, 4), dtype=bool)
    seen[:, 0] = detail
    return StepRecord(
        step=step, layers=LAYERS, act=act, act_numel=np.full(L, 10.0), grad=grad, grad_numel=np.full(L, 10.0),
        input_finite=finite, saturation=np.full(L, np.nan), param_names=PARAMS, param_layer=np.array([2, 3]),
        param_sumsq=psq, param_grad_sumsq=pgrad, param_update_sumsq=np.full(P, np.nan),
        param_step_grad_sumsq=pgrad.copy(), param_seen=seen, forward_order=[2, 1, 3, 0],
        backward_order=list(backward), optimizer_stepped=True, detail=detail,
        input_sources=sources if sources is not None else {3: (1,)},
    )


def origins(*recs) -> list[tuple]:
    eng = DetectorEngine(layers=LAYERS, types=("Net", "Block", "Linear", "Linear"))
    for r in recs:
        eng.update(r)
    f = eng.frame()
    f = f[f.kind == "nan_origin"]
    return list(zip(f.step, f.layer, f.phase, strict=True))


def test_forward_origin_is_the_innermost_module_and_downstream_is_not():
    # inner, block (its parent) and head (downstream) all non-finite: the origin is inner
    assert origins(record(act_nan=(2, 1, 3, 0), input_bad=(3,))) == [(0, "block.inner", "forward")]


def test_parent_code_between_children_is_the_origin():
    # inner finite, block's own code makes NaN (block output bad, its inputs finite)
    assert origins(record(act_nan=(1, 3, 0), input_bad=(3,))) == [(0, "block", "forward")]


def test_non_finite_model_input_is_reported_as_data():
    eng = DetectorEngine(layers=LAYERS)
    eng.update(record(act_nan=(2, 1, 3, 0), input_bad=(0, 1, 2, 3)))
    f = eng.frame()
    assert list(f.layer) == [""] and "data" in f.message.iloc[0]


def test_backward_origin_is_the_consumer_of_the_first_non_finite_gradient():
    # head's output gradient is finite; block's output gradient (head's input) is not: head did it
    assert origins(record(grad_nan=(1, 2), pgrad_bad=(0,))) == [(0, "head", "backward")]


def test_backward_origin_from_a_parameter_gradient():
    assert origins(record(pgrad_bad=(1,))) == [(0, "head", "backward")]


def test_no_origin_in_later_steps_once_parameters_are_non_finite():
    first = record(0, act_nan=(2, 1, 3, 0), input_bad=(3,), grad_nan=(0, 1, 2, 3), pgrad_bad=(0, 1),
                   param_bad=(0, 1))
    later = [record(s, act_nan=(2, 1, 3, 0), input_bad=(3,), grad_nan=(0, 1, 2, 3), pgrad_bad=(0, 1),
                    param_bad=(0, 1), detail=False) for s in (1, 2, 3)]
    assert origins(first, *later) == [(0, "block.inner", "forward")]


def test_parameter_that_goes_non_finite_in_an_update_with_finite_gradients():
    ok = record(0)
    bad = record(1, param_bad=(1,))
    f = DetectorEngine(layers=LAYERS)
    f.update(ok)
    f.update(bad)
    df = f.frame()
    assert list(zip(df.step, df.layer, df.kind, strict=True)) == [(1, "head", "nan_origin")]
    assert "head.weight" in df.message.iloc[0] and "optimizer" in df.hint.iloc[0]


def test_engine_keeps_working_when_one_detector_fails(monkeypatch):
    eng = DetectorEngine(layers=LAYERS)

    def boom(*a):
        raise RuntimeError("bug in a detector")

    dead = next(d for d in eng.detectors if d.kinds == ("dead_units",))
    monkeypatch.setattr(dead, "update", boom)
    with pytest.raises(RuntimeError, match="bug in a detector"):
        eng.update(record(act_nan=(2, 1, 3, 0), input_bad=(3,)))
    assert list(eng.frame().kind) == ["nan_origin"]  # the other detectors still ran and logged


# --- one detector interface (issue 9's item, done in issue 10) ---------------------------------------

def test_every_detector_has_the_one_interface_and_the_engine_just_loops():
    import inspect

    from gradsight.detectors import DETECTORS, Context, Finding

    for cls in DETECTORS:
        assert list(inspect.signature(cls.update).parameters) == ["self", "rec", "metrics", "ctx"], cls
        assert cls.kinds and all(isinstance(k, str) for k in cls.kinds), cls

    class Always:
        kinds = ("custom",)

        def __init__(self, layout, th):
            self.layout = layout

        def update(self, rec, metrics, ctx: Context) -> list[Finding]:
            return [Finding(step=rec.step, layer="head", kind="custom", severity="warning", message="m")]

    eng = DetectorEngine(layers=LAYERS)
    eng.detectors.append(Always(eng.layout, eng.thresholds))
    warned = [eng.update(record(s)) for s in range(3)]
    f = eng.frame()
    assert list(zip(f.kind, f.step, f.last_step, f["count"], strict=True)) == [("custom", 0, 2, 3)]
    assert [len(w) for w in warned] == [1, 0, 0]  # one live warning, at the first record
