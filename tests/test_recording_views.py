"""`gradsight summary PATH` and the views on recordings: compare, figures, dashboard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.cli import main
from tests import faulty_models as fm

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    _train(fm.he_mlp(d=8, width=32, out=1), 20, root / "healthy")
    _train(nn.Sequential(nn.Linear(8, 16), fm.LogFeatures(), nn.Linear(16, 1)), 5, root / "nan")
    return root


def _train(model, steps, path):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.warns(gs.GradsightWarning) if "nan" in path.name else _nothing(), \
            gs.watch(model, optimizer=opt, histogram_every=2, record=path) as w:
        for _ in range(steps):
            x = torch.randn(16, 8)
            loss = (model(x) - x[:, :1]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            w.step(loss=loss)


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def test_summary_exit_status_follows_error_findings(runs, capsys):
    assert main(["summary", str(runs / "healthy")]) == 0
    out = capsys.readouterr().out
    assert "steps 0-19 (20 stored)" in out and "nothing wrong detected" in out and "Layers" in out
    assert main(["summary", str(runs / "nan")]) == 1
    out = capsys.readouterr().out
    assert "ERROR" in out and "nan" in out.lower()
    assert max(len(line) for line in out.splitlines()) <= 100


def test_summary_reports_unopenable_paths(tmp_path, capsys):
    assert main(["summary", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["summary", str(tmp_path / "empty")]) == 2
    assert "empty directory" in capsys.readouterr().err


def test_console_script_is_declared():
    from pathlib import Path

    import tomllib

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["gradsight"] == "gradsight.cli:main"


def test_compare_two_recordings(runs, tmp_path):
    from gradsight import widgets as gw

    a, b = gs.open(runs / "healthy"), gs.open(runs / "nan")
    fig = gw.compare(a, b)
    titles = " | ".join(ax.get_title(loc=loc) for ax in fig.axes for loc in ("left", "center"))
    assert "Loss" in titles and "Gradient flow" in titles and "finding(s)" in titles
    assert "per layer over steps" in titles
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("ERROR" in t for t in texts)  # b's NaN origin is listed
    assert any("nothing wrong detected" in t for t in texts)  # a is healthy
    fig.savefig(tmp_path / "compare.png")
    with pytest.raises(TypeError, match="Watcher or a Recording"):
        gw.compare(a, "runs/b")


def test_every_figure_takes_a_recording(runs):
    from gradsight import widgets as gw

    rec = gs.open(runs / "healthy")
    layer = rec.layer_names[1]
    assert "closed" in rec._repr_html_() and "20 steps" in rec._repr_html_()
    for fig in (gw.gradient_flow(rec), gw.heatmap(rec), gw.training_curves(rec), gw.distribution(rec, layer),
                gw.histogram(rec, layer), gw.dead_units(rec, "1")):
        assert fig.axes


def test_summary_shows_a_loss_that_turned_nan_not_the_last_finite_one(tmp_path, capsys):
    """A run whose loss goes NaN at step 6: the loss line must say so (it showed the last finite loss as
    the run's last, as if training ended well)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.warns(gs.GradsightWarning), gs.watch(model, optimizer=opt, record=tmp_path / "run") as w:
        for step in range(10):
            x = torch.randn(16, 8)
            if step == 6:
                x[0, 0] = float("nan")  # the weights turn NaN at this step's update: every later loss is NaN
            loss = (model(x) - x[:, :1]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            w.step(loss=loss)
    losses = gs.open(tmp_path / "run").steps()["loss"].to_numpy()
    assert np.isfinite(losses[:6]).all() and np.isnan(losses[6:]).all()
    assert main(["summary", str(tmp_path / "run")]) == 1
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("loss: "))
    assert f"-> nan (min {losses[:6].min():.4g} at step {int(np.argmin(losses[:6]))}); NaN/Inf from step 6, " \
           f"last finite {losses[5]:.4g} at step 5" in line, line
    from gradsight.cli import _loss_line

    steps = np.arange(5)
    assert _loss_line(steps, np.full(5, np.nan)).startswith("no finite value")  # never given, or NaN throughout
    assert _loss_line(steps, np.array([np.nan, 2.0, 1.0, 3.0, 1.5])) == "2 -> 1.5 (min 1 at step 2)"  # no loss at 0
    assert _loss_line(steps, np.array([np.inf, 2.0, 1.0, 3.0, 1.5])).endswith("; NaN/Inf from step 0")
