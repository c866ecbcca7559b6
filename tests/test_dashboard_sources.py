"""The dashboard's source and rank choosers: several named watchers in one kernel (a GAN), and a
source from a torch.distributed job (the rank dropdown, the rank that went wrong first, per-rank
step times). A real DDP watcher's dashboard is built in tests/test_integrations_lightning_ddp.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.detectors.finding import FINDING_COLUMNS

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")
from gradsight.widgets import source  # noqa: E402
from gradsight.widgets.dashboard import RANKS_TAB, TABS, Dashboard  # noqa: E402


def _gan():
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
    D = nn.Sequential(nn.Linear(8, 12), nn.LeakyReLU(0.2), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 1))
    og, od = torch.optim.SGD(G.parameters(), lr=0.01), torch.optim.SGD(D.parameters(), lr=0.01)
    wg, wd = gs.watch(G, optimizer=og, name="G"), gs.watch(D, optimizer=od, name="D")
    z = torch.randn(32, 4)
    for _ in range(3):
        od.zero_grad()
        nn.functional.softplus(D(G(z).detach())).mean().backward()
        od.step()
        og.zero_grad()
        nn.functional.softplus(-D(G(z))).mean().backward()
        og.step()
    return (G, D), wg, wd


def _keys(dash):
    return [v for _, v in dash.source_choice.options]


def test_gan_generator_and_discriminator_are_chosen_by_name():
    models, wg, wd = _gan()
    dash = gs.dashboard()  # the newest watcher: D
    dash._repr_mimebundle_()
    assert dash.watcher is wd and dash.source_choice.value == "D"
    assert {"G", "D"} <= set(_keys(dash)) and dash.source_choice.layout.display is None
    assert dash.choosers in dash.children
    flow_d = dash.images["flow"].value
    assert [v for _, v in dash.layer.options] == wd.layer_names

    dash.source_choice.value = "G"  # the user picks the generator: every view follows
    assert dash.watcher is wg
    assert [v for _, v in dash.layer.options] == wg.layer_names and dash.layer.value in wg.layer_names
    assert "<code>G</code>" in dash.header.value
    assert dash.images["flow"].value[:4] == b"\x89PNG" and dash.images["flow"].value != flow_d
    dash.tabs.selected_index = 1
    assert [v for _, v in dash.step.options] == wg.histogram_steps(dash.layer.value, "grad")

    late = gs.watch(nn.Linear(3, 3), name="critic")  # created later: listed at once (the dashboard is live)
    assert "critic" in _keys(dash)
    wd.close()  # closed: leaves the list
    assert "D" not in _keys(dash) and dash.watcher is wg and dash.live
    late.close()
    dash.close()
    wg.close()


def test_w_dashboard_keeps_its_signature_and_offers_the_other_watchers():
    _, wg, wd = _gan()
    dash = wg.dashboard()
    assert dash.watcher is wg and {"G", "D"} <= set(_keys(dash))
    wg.close()
    wd.close()
    dash.close()


def test_closing_the_shown_watcher_keeps_it_listed_and_a_choice_goes_live_again():
    _, wg, wd = _gan()
    dash = Dashboard(wg)
    dash._repr_mimebundle_()
    wg.close()
    assert not dash.live and ("G (closed)", "G") in dash.source_choice.options
    dash.source_choice.value = "D"
    assert dash.watcher is wd and dash.live
    wd.close()
    dash.close()


def test_a_lone_source_hides_the_chooser_and_no_source_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(gs.bus, "active_watchers", lambda: [])
    monkeypatch.setattr(gs.bus, "open_recordings", lambda: [])
    with pytest.raises(ValueError, match=r"no model is watched.*gs\.watch"):
        gs.dashboard()
    w = gs.watch(nn.Linear(2, 2), name="solo")
    dash = Dashboard(w)
    assert _keys(dash) == ["solo"] and dash.source_choice.layout.display == "none"
    assert dash.choosers not in dash.children  # nothing to choose: no row in the page
    w.close()
    dash.close()


# --- ranks --------------------------------------------------------------------------------------

def _finding(step, kind, severity, layer, rank):
    row = dict.fromkeys(FINDING_COLUMNS, "")
    row.update(step=step, last_step=step, count=1, kind=kind, severity=severity, layer=layer, value=0.0,
               threshold=0.0, rank=rank)
    return row


class RankedSource:
    """A live watcher's rank API as rank 0 of a world-2 job sees it (ranks(), history(rank=), a rank
    column in findings), over a real single-process watcher for the layer views. Rank 1 made the
    NaN at step 7; rank 0 reports the spread NaN at the same step (an earlier layer, so it sorts
    first) — the origin must still be rank 1."""

    world_size, rank = 2, 0

    def __init__(self, w):
        self._w = w

    def __getattr__(self, name):
        return getattr(self._w, name)

    def findings(self, all=False):  # noqa: A002
        return pd.DataFrame([_finding(3, "dead_units", "warning", "0", 0),
                             _finding(7, "nan_origin", "error", "0", 0),
                             _finding(7, "rank_nonfinite", "error", "2", 1)])

    def history(self, metric="grad_norm", rank=None):
        if rank is None or metric not in ("step_s", "backward_s"):
            return self._w.history(metric)
        steps = np.arange(10)
        return pd.DataFrame({metric: 0.010 + 0.02 * rank + 0.001 * steps}, index=pd.Index(steps, name="step"))

    def ranks(self):
        return pd.DataFrame({"rank": [0, 1], "steps": [10, 10], "step_s": [0.015, 0.035],
                             "forward_s": [0.004, 0.012], "backward_s": [0.008, 0.02],
                             "allreduce_s": [0.002, 0.002], "busy_s": [0.012, 0.032],
                             "nonfinite_steps": [3, 4], "first_nonfinite_step": [7, 7], "findings": [2, 1],
                             "self": [True, False]})


def test_rank_dropdown_marks_the_rank_that_went_wrong_first():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt, name="ddp-rank0")
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    src = RankedSource(w)
    dash = Dashboard(src)
    dash._repr_mimebundle_()
    assert dash.tabs.titles == TABS and dash.rank_choice.layout.display is None
    labels = dict((v, lab) for lab, v in dash.rank_choice.options)
    assert list(labels) == [0, 1] and "went wrong first" in labels[1] and "went wrong first" not in labels[0]
    assert "this process" in labels[0]
    assert "rank 1 went wrong first, step 7 (rank_nonfinite at &#x27;2&#x27;)" in dash.rank_note.value
    assert "rank 0 of 2" in dash.header.value
    assert dash.findings.options[0][0].split()[1:3] == ["rank", "0"]  # the rank column is shown

    dash.tabs.selected_index = RANKS_TAB
    first = dash.images["ranks"].value
    assert first[:4] == b"\x89PNG" and len(first) > 5000
    assert dash.ranks_html.value.count("<tr") == 3 and "font-weight:bold" in dash.ranks_html.value
    assert dash.rank_choice.value == 1  # it opens on the rank that went wrong first
    dash.rank_choice.value = 0  # choosing a rank redraws the chart and the highlighted row
    assert bytes(dash.images["ranks"].value) != bytes(first)
    rows = dash.ranks_html.value.split("<tr")[2:]  # after the header: rank 0, rank 1
    assert "font-weight:bold" in rows[0] and "font-weight:bold" not in rows[1] and "15" in rows[0]

    dash.show_source(w)  # a single-process source: the Ranks tab and the rank chooser go away
    assert dash.tabs.titles == TABS[:RANKS_TAB] and dash.rank_choice.layout.display == "none"
    assert dash.rank_note.value == ""
    assert dash.choosers not in dash.children or dash.source_choice.layout.display is None
    dash.close()
    w.close()


def test_first_bad_rank_against_a_naive_reading():
    rows = [_finding(3, "exploding", "error", "a", 0), _finding(7, "rank_nonfinite", "error", "b", 1)]
    assert source.first_bad_rank(pd.DataFrame(rows))["rank"] == 0  # the earliest error, whatever its kind
    rows = [_finding(7, "nan_origin", "error", "a", 0), _finding(7, "rank_nonfinite", "error", "b", 1),
            _finding(2, "dead_units", "warning", "a", 1)]
    assert source.first_bad_rank(pd.DataFrame(rows)) == {"rank": 1, "step": 7, "kind": "rank_nonfinite",
                                                         "layer": "b"}
    assert source.first_bad_rank(pd.DataFrame(rows[2:])) is None  # warnings never name an origin
    no_rank = pd.DataFrame(rows).drop(columns="rank")
    assert source.first_bad_rank(no_rank) is None
    rows = [_finding(5, "replica_divergence", "error", "w", -1)]  # names no single rank
    assert source.first_bad_rank(pd.DataFrame(rows)) is None


def test_a_live_watcher_s_layer_views_stay_its_own_rank_and_say_so():
    """A live watcher holds only its own rank's layers: choosing another rank keeps its layer views
    (today's behaviour) and a line says whose they are, never rank 0's numbers as rank 1's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    w = gs.watch(model, name="ddp-rank0-live")
    for _ in range(3):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        w.step()
    dash = Dashboard(RankedSource(w))
    dash._repr_mimebundle_()
    try:
        assert dash.rank_choice.value == 1  # the rank that went wrong first
        view, shown = dash.layer_source()
        assert view is dash.watcher and shown == 0
        assert "layer views show rank 0 (this process: rank 1&#x27;s layer statistics stay in rank 1&#x27;s" \
            in dash.layers_rank_note.value
        flow = bytes(dash.images["flow"].value)
        dash.rank_choice.value = 0
        assert "layer views show rank 0<" in dash.layers_rank_note.value and "process" not in dash.layers_rank_note.value
        assert bytes(dash.images["flow"].value) == flow  # the same rank's layers, drawn again
    finally:
        dash.close()
        w.close()


@pytest.fixture(scope="module")
def ranked_job(tmp_path_factory):
    """A recording of a real world-2 gloo job (tests/ranked_recording.py, ~7 s): rank 1's inputs are
    100x rank 0's and hold a NaN at step 25, so its layers differ from rank 0's everywhere."""
    pytest.importorskip("pyarrow")
    import ranked_recording

    return ranked_recording.write(tmp_path_factory.mktemp("ddp") / "run")


def _first_of(rec, kind: str) -> str:
    table = rec.layers()
    return str(table.loc[table["type"] == kind, "layer"].iloc[0])


def test_the_rank_dropdown_switches_the_layer_views_of_a_ranked_recording(ranked_job, monkeypatch):
    from gradsight.widgets import dashboard as dashboard_module
    from gradsight.widgets import style
    from gradsight.widgets.gradient_flow import gradient_flow

    given = {}  # what each layer view was asked to draw

    def spy(name):
        real = getattr(dashboard_module, name)

        def draw(src, *args, **kw):
            given[name] = src
            return real(src, *args, **kw)
        return draw

    for name in ("gradient_flow", "histogram", "distribution", "heatmap", "dead_units"):
        monkeypatch.setattr(dashboard_module, name, spy(name))
    rec = gs.open(ranked_job)
    dash = rec.dashboard()
    dash._repr_mimebundle_()
    try:
        linear, relu = _first_of(rec, "Linear"), _first_of(rec, "ReLU")
        assert dash.rank_choice.value == 1  # it opens on the rank that went wrong first
        flows = {}
        for rank in (1, 0):
            dash.rank_choice.value = rank
            assert dash.layer_source()[1] == rank
            assert f"layer views show rank {rank}<" in dash.layers_rank_note.value
            dash.layer.value = linear
            for tab in (0, 1, 2, 4):
                dash.tabs.selected_index = tab
            dash.tabs.selected_index = 0
            pd.testing.assert_frame_equal(given["gradient_flow"].layers(), rec.layers(rank=rank))
            for view in ("histogram", "distribution"):
                np.testing.assert_array_equal(given[view].histogram(linear, "grad").counts,
                                              rec.histogram(linear, "grad", rank=rank).counts)
            assert [v for _, v in dash.step.options] == rec.histogram_steps(linear, "grad", rank=rank)
            pd.testing.assert_frame_equal(given["heatmap"].history("grad_norm"), rec.history("grad_norm", rank=rank))
            pd.testing.assert_frame_equal(given["heatmap"].history("grad_nan"), rec.history("grad_nan", rank=rank))
            pd.testing.assert_frame_equal(given["dead_units"].unit_history(relu), rec.unit_history(relu, rank=rank))
            # the picture itself: the gradient flow of rank's layers table, drawn directly
            flows[rank] = bytes(dash.images["flow"].value)
            of_rank = dash._findings[dash._findings["rank"].isin([rank, -1])]  # the naive filter
            direct = gradient_flow(rec.layers(rank=rank), findings=of_rank, selected=linear)
            assert flows[rank] == style.png_bytes(direct)
        # rank 1's NaN origin flags rank 1's layer, not rank 0's layer of the same name
        found = dash._findings
        origin = found[found["kind"] == "rank_nonfinite"]
        assert len(origin) and set(origin["rank"]) == {1}
        assert not source.findings_of_rank(found, 0)["kind"].eq("rank_nonfinite").any()
        assert source.findings_of_rank(found, 1)["kind"].eq("rank_nonfinite").any()
        assert flows[0] != flows[1]
        assert not np.allclose(rec.layers(rank=0)["grad_norm"], rec.layers(rank=1)["grad_norm"])
        # the training curves are the job's top directory's (rank 0's) step scalars whatever the rank
        assert dash.watcher is rec
    finally:
        dash.close()
        rec.close()


def test_a_recording_without_a_rank_s_shard_says_whose_layers_it_shows(ranked_job, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(ranked_job, copy)
    shutil.rmtree(copy / "ranks" / "1")
    with pytest.warns(gs.GradsightWarning, match="rank 1"):
        rec = gs.open(copy)
    dash = rec.dashboard()
    try:
        dash.rank_choice.value = 1
        assert dash.layer_source() == (rec, 0)
        assert "layer views show rank 0 (this recording holds no layer statistics of rank 1 (yet))" \
            in dash.layers_rank_note.value
    finally:
        dash.close()
        rec.close()
