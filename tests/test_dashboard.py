"""The ipywidgets dashboard, headless: live redraws from step(), throttling, life cycle, controls.

The browser test (tests/ui/test_dashboard_browser.py) shows the same in a real front-end.
"""

from __future__ import annotations

import time
import warnings

import pandas as pd
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight import bus as registry

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")
from gradsight.widgets.dashboard import RANKS_TAB, TABS, Dashboard  # noqa: E402


def make_run(steps=0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, histogram_every=2)
    x, y = torch.randn(64, 8), torch.randn(64, 1)

    def train(n, sleep=0.0):
        for _ in range(n):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            w.step(loss)
            if sleep:
                time.sleep(sleep)

    train(steps)
    return model, w, train


def show(dash):
    """What IPython's display() does with a widget."""
    return dash._repr_mimebundle_()


def test_costs_nothing_until_displayed_and_after_close():
    _, w, train = make_run(2)
    before = len(registry._subscribers)
    dash = w.dashboard()
    assert isinstance(dash, Dashboard)
    assert len(registry._subscribers) == before and not dash.live
    bundle = show(dash)
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert dash.live and len(registry._subscribers) == before + 1
    dash.close()
    assert not dash.live and len(registry._subscribers) == before
    train(3)  # no callback left to run
    w.close()


def test_cleared_output_and_closed_watcher_unsubscribe():
    _, w, _ = make_run(2)
    before = len(registry._subscribers)
    dash = w.dashboard()
    show(dash)
    dash._view_count = 1   # the front-end reports a view ...
    dash._view_count = 0   # ... and its removal (output cleared)
    assert not dash.live and len(registry._subscribers) == before
    show(dash)
    assert dash.live
    w.close()
    assert not dash.live and "closed" in dash.header.value
    dash.close()


def test_live_redraws_are_throttled_and_change_the_picture():
    _, w, train = make_run(1)
    dash = w.dashboard()
    show(dash)
    first = dash.images["flow"].value
    assert first[:4] == b"\x89PNG"
    t0 = time.perf_counter()
    train(24, sleep=0.06)
    elapsed = time.perf_counter() - t0
    assert 1 <= dash.redraws <= elapsed / dash.min_interval + 1, (dash.redraws, elapsed)
    assert dash.images["flow"].value != first
    # either the last redraw already shows the newest step, or a throttled redraw is pending
    shown_latest = any(f">{n}<" in dash.header.value for n in (w.step_count - 1, w.step_count))
    assert shown_latest or dash.throttle.pending is not None, dash.header.value
    dash._after_cell()  # the cell finished: a throttled redraw catches up
    assert f">{w.step_count}<" in dash.header.value
    dash.close()
    w.close()


def test_every_tab_renders_and_controls_work():
    _, w, train = make_run(12)
    dash = w.dashboard()
    show(dash)
    assert dash.tabs.titles == TABS[:RANKS_TAB]  # one process: no Ranks tab, no rank or source chooser
    assert dash.rank_choice.layout.display == "none"
    for i in range(len(dash.tabs.children)):
        dash.tabs.selected_index = i
    for key in ("flow", "hist", "dist", "heat", "curves", "dead", "gradcheck"):
        assert dash.images[key].value[:4] == b"\x89PNG" and len(dash.images[key].value) > 2000, key
    dash.tabs.selected_index = 1
    dash.layer.value = "2"
    steps = [v for _, v in dash.step.options]
    assert steps == w.histogram_steps("2", "grad")
    before = dash.images["hist"].value
    dash.step.value = steps[0]
    assert dash.images["hist"].value != before
    dash.of.value = "activation"
    assert [v for _, v in dash.step.options] == w.histogram_steps("2", "activation")
    dash.tabs.selected_index = 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dash.run_gradcheck()
    assert "gradcheck" in dash.gradcheck_html.value and "passed" in dash.gradcheck_html.value
    dash.layer.value = ""  # the root module: gradcheck explains instead of crashing
    dash.run_gradcheck()
    assert dash.gradcheck_html.value
    dash.close()
    w.close()


def test_choosing_a_finding_selects_its_layer_and_step(monkeypatch):
    _, w, _ = make_run(10)
    found = pd.DataFrame([
        {"step": 2, "last_step": 9, "count": 8, "layer": "3", "kind": "dead_units", "severity": "warning",
         "message": "20 of 32 units never fired", "hint": "", "phase": "forward", "op": "", "source": "",
         "value": 0.6, "threshold": 0.5},
        {"step": 6, "last_step": 6, "count": 1, "layer": "2", "kind": "nan_origin", "severity": "error",
         "message": "first NaN", "hint": "", "phase": "backward", "op": "aten::mm", "source": "", "value": 1.0,
         "threshold": 0.0},
    ])
    monkeypatch.setattr(w, "findings", lambda: found)  # a UI test: the detectors are tested elsewhere
    dash = w.dashboard()
    show(dash)
    labels = [label for label, _ in dash.findings.options]
    assert labels[1].startswith("ERROR") and "nan_origin" in labels[1]  # w.findings()'s order (issue 9)
    assert "1 error" in dash.header.value and "1 warning" in dash.header.value
    assert dash.layer.value == "2"  # the most seriously flagged layer is selected by default
    dash.findings.value = 0  # the dead_units row
    assert dash.layer.value == "3"
    assert dash.step.value == min(w.histogram_steps("3", "grad"), key=lambda s: abs(s - 2))
    dash.close()
    w.close()


def test_dashboard_rejects_a_non_watcher():
    with pytest.raises(TypeError, match="Watcher"):
        Dashboard(nn.Linear(2, 2))
