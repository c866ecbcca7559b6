"""One read path: a RunHistory fed the same step records answers exactly as the Watcher did,
so a source that is not a watcher (a Recording) works in every table and figure."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.records.queries import RunQueries
from gradsight.records.run_history import STEP_COLUMNS, RunHistory


class Replay(RunQueries):
    """A minimal non-watcher source: records replayed into a RunHistory, findings given."""

    def __init__(self, history, findings, name="replay", step_count=0):
        self._history = history
        self._findings = findings
        self.name = name
        self.step_count = step_count

    def _findings_frame(self):
        return self._findings


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    with torch.no_grad():
        model[0].bias[:10] = -50.0  # ten units of the ReLU never fire
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, histogram_every=3)
    h = RunHistory(w.layer_names, w.layers()["type"], w.bins, param_counts=w.layers()["params"],
                   name=w.name, histogram_every=w.histogram_every)
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    for _ in range(25):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        w.step(loss)
        h.append(w.last_record())
    w.close()
    return w, Replay(h, w.findings(), name=w.name, step_count=w.step_count)


def test_every_query_matches_the_watcher(run):
    w, r = run
    assert r.layer_names == w.layer_names and r.last_step == w.last_step == 24
    pd.testing.assert_frame_equal(r.layers(), w.layers())
    pd.testing.assert_frame_equal(r.steps(), w.steps())
    for metric in ("grad_norm", "act_max", "update_ratio", *STEP_COLUMNS):
        pd.testing.assert_frame_equal(r.history(metric), w.history(metric))
    for layer in w.layer_names:
        for of in ("grad", "activation", "weight"):
            assert r.histogram_steps(layer, of) == w.histogram_steps(layer, of)
    a, b = r.histogram("0", "grad", step=3), w.histogram("0", "grad", step=3)
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.edges, b.edges) and a.total == b.total
    pd.testing.assert_frame_equal(r.unit_history("1"), w.unit_history("1"))
    pd.testing.assert_frame_equal(r.findings(), w.findings())


def test_errors_are_the_watchers(run):
    w, r = run
    for call in (lambda s: s.histogram("nope"), lambda s: s.unit_history("0"), lambda s: s.history("bogus"),
                 lambda s: s.histogram("0", of="grads"), lambda s: s.histogram("0", step=1)):
        with pytest.raises(ValueError) as a:
            call(r)
        with pytest.raises(ValueError) as b:
            call(w)
        assert str(a.value) == str(b.value)


def test_the_stored_facts_are_the_records():
    """Against a naive re-reading: the scalars row is (loss, lr, forward_s, backward_s, total grad norm)."""
    torch.manual_seed(1)
    model = nn.Linear(3, 2)
    w = gs.watch(model)
    h = RunHistory(w.layer_names, ["Linear"], w.bins)
    model(torch.randn(4, 3)).sum().backward()
    w.step(loss=1.5)
    rec = w.last_record()
    h.append(rec)
    steps, row = h.scalars.valid()
    g = np.sqrt(sum(float(p.grad.double().square().sum()) for p in model.parameters()))
    assert steps.tolist() == [0]
    assert row[0, 0] == 1.5 and np.isnan(row[0, 1]) and row[0, 2] == rec.forward_s
    assert row[0, 4] == pytest.approx(g, rel=1e-5)
    h.set_loss(0, 2.5)
    assert h.scalars.valid()[1][0, 0] == 2.5
    w.close()


def test_bad_layer_types_are_refused_clearly():
    with pytest.raises(ValueError, match="2 layer names but 1 types"):
        RunHistory(["a", "b"], ["Linear"], 8)


def test_figures_draw_from_a_source_that_is_not_a_watcher(run):
    from gradsight import widgets as gw

    _, r = run
    for fig in (gw.gradient_flow(r), gw.heatmap(r), gw.training_curves(r), gw.histogram(r, "0"),
                gw.distribution(r, "0"), gw.dead_units(r, "1")):
        assert fig.axes
    assert "10 of 16 units dead" in "\n".join(a.get_title("left") for a in gw.dead_units(r, "1").axes)


def test_dead_units_of_a_watcher_draws_the_steps_its_unit_history_keeps(run):
    """Issue 9 bug: the figure of a Watcher drew its last step only, while w.unit_history()
    kept the window. One compute path now: every step of unit_history, the same dead count."""
    from gradsight import widgets as gw

    w, _ = run
    kept = w.unit_history("1")
    assert len(kept) == 25
    title = "\n".join(a.get_title("left") for a in gw.dead_units(w, "1").axes)
    assert "in the last 25 steps" in title
    dead = int((~(kept.to_numpy() > 0).any(axis=0)).sum())
    assert f"{dead} of 16 units dead" in title and dead == 10
    assert "in the last 5 steps" in "\n".join(a.get_title("left") for a in gw.dead_units(w, "1", window=5).axes)
    act = gw.UnitActivity.from_watcher(w, window=7)
    steps, m = act.matrix("1")
    assert steps.tolist() == kept.index[-7:].tolist() and np.array_equal(m, kept.to_numpy()[-7:])
