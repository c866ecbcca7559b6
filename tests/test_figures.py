"""Every figure on a real watched model, a run that went NaN, a 120+-layer model and no data.

Each PNG goes to test-artifacts/figures/ so a person can look at it (and did, while
these figures were made). The asserts check what must hold whatever the look: a Figure
comes back, drawing on a given ax works, non-finite values and empty data never crash
and say what they are, and views render from saved tables without the model.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradsight as gs

mpl = pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

from gradsight import widgets as gw  # noqa: E402
from gradsight.gradcheck import gradcheck  # noqa: E402
from gradsight.widgets import style  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "test-artifacts" / "figures"
CASES = ("planted", "diverged", "deep", "empty")


def save(fig, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    fig.savefig(path)
    assert path.stat().st_size > 2000
    return path


def texts(fig) -> str:
    """All text drawn in a figure: titles, labels, tick labels, annotations, legends."""
    out = []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_title("left"), ax.get_xlabel(), ax.get_ylabel()]
        out += [t.get_text() for t in ax.texts]
        out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        if ax.get_legend():
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return "\n".join(out)


class PlantedCNN(nn.Module):
    """A small CNN with a dead ReLU (bias -5 before it) and a sigmoid stack that starves the input side."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.Sigmoid(), nn.Linear(32, 32),
                                  nn.Sigmoid(), nn.Linear(32, 4))
        with torch.no_grad():
            self.features[2].bias[:10].fill_(-6.0)  # 10 of 16 channels dead

    def forward(self, x):
        return self.head(self.features(x))


class Deep(nn.Module):
    """60 nested blocks (121 leaves) with long qualified names, as in real deep models."""

    def __init__(self, n=60, d=12):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(d, d), nn.Tanh()) for _ in range(n))
        self.classifier = nn.Linear(d, 2)

    def forward(self, x):
        for block in self.encoder.layers:
            x = block(x)
        return self.classifier(x)


def _train(model, steps, lr, x, y, loss_fn, histogram_every=2):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    w = gs.watch(model, optimizer=opt, histogram_every=histogram_every)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            w.step(loss)
    return w


@pytest.fixture(scope="module")
def runs():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    out = {}
    x = torch.randn(16, 3, 8, 8, generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    out["planted"] = _train(PlantedCNN(), 20, 0.05, x, y, nn.functional.cross_entropy)
    mlp = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Linear(32, 1))
    xd, yd = torch.randn(64, 8, generator=g) * 3, torch.randn(64, 1, generator=g) * 10
    out["diverged"] = _train(mlp, 14, 0.2, xd, yd, nn.functional.mse_loss, histogram_every=1)
    xs, ys = torch.randn(8, 12, generator=g), torch.randint(0, 2, (8,), generator=g)
    out["deep"] = _train(Deep(), 4, 0.1, xs, ys, nn.functional.cross_entropy)
    out["empty"] = gs.watch(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)))
    yield out
    for w in out.values():
        w.close()


LAYER = {"planted": "features.2", "diverged": "2", "deep": "encoder.layers.3.0", "empty": "0"}
RELU = {"planted": "features.3", "diverged": "1", "deep": "encoder.layers.0.1", "empty": "1"}


@pytest.mark.parametrize("case", CASES)
def test_gradient_flow(runs, case):
    w = runs[case]
    fig = gw.gradient_flow(w)
    assert isinstance(fig, Figure)
    save(fig, f"gradient_flow_{case}")
    t = texts(fig)
    if case == "empty":
        assert "run a training step" in t
    elif case == "diverged":
        assert "NaN/Inf" in t and "last finite" in t
    else:
        assert "Gradient flow at step" in t and "(log scale)" in t
    if case == "deep":
        ax = fig.axes[0]
        labels = [lab.get_text() for lab in ax.get_xticklabels()]
        assert 0 < len(labels) <= 61, "121 layers must be thinned to legible labels"
        assert max(len(s) for s in labels) <= 22
        assert ax.get_yscale() == "log"


@pytest.mark.parametrize("case", CASES)
def test_distribution_and_histogram(runs, case):
    w = runs[case]
    fig = gw.distribution(w, LAYER[case], of="grad", selected_step=4)
    save(fig, f"distribution_grad_{case}")
    fig2 = gw.histogram(w, LAYER[case], of="grad")
    save(fig2, f"histogram_grad_{case}")
    if case in ("planted", "diverged"):
        save(gw.distribution(w, LAYER[case], of="activation"), f"distribution_activation_{case}")
    t = texts(fig) + texts(fig2)
    for label in ("-Inf", "+Inf", "NaN"):  # non-finite columns are always drawn
        assert case == "empty" or label in t
    if case == "empty":
        assert "run a training step" in t
    if case == "diverged":
        assert "first NaN/Inf at step" in texts(fig)
        assert "NaN" in fig2.axes[0].get_title()


@pytest.mark.parametrize("case", CASES)
def test_heatmap(runs, case):
    fig = gw.heatmap(runs[case])
    save(fig, f"heatmap_{case}")
    t = texts(fig)
    if case == "empty":
        assert "run a training step" in t
    else:
        assert "gradient norm (log scale)" in t
    if case == "diverged":
        assert "first NaN/Inf at step" in t


@pytest.mark.parametrize("case", CASES)
def test_dead_units(runs, case):
    w = runs[case]
    act = gw.UnitActivity.from_watcher(w)
    fig = gw.dead_units(w, RELU[case])
    save(fig, f"dead_units_{case}")
    t = texts(fig)
    if case == "planted":
        assert "10 of 16 units dead" in t
        assert act.dead_fraction("features.3") == pytest.approx(10 / 16)
    elif case == "empty":
        assert "run a training step" in t
    elif case == "diverged":
        assert "ReLU-family layers" in t  # a Tanh has no unit activity, and the figure says why


def test_dead_units_over_a_window():
    """Units that fire in some steps of the window are alive; only never-firing ones are dead."""
    rng = np.random.default_rng(0)
    m = rng.random((30, 64)) + 0.1
    m[:, :16] = 0.0             # dead all window
    m[::3, 16:24] = 0.0         # intermittent: alive
    m[:, 60] = np.nan           # non-finite never crashes
    fig = gw.dead_units(m, "relu", steps=np.arange(100, 130))
    save(fig, "dead_units_window")
    assert "16 of 64 units dead" in texts(fig)


@pytest.mark.parametrize("case", CASES)
def test_training_curves(runs, case):
    fig = gw.training_curves(runs[case])
    save(fig, f"training_curves_{case}")
    assert len(fig.axes) == 4  # loss, lr, gradient norm and (issue 10) the step's time split
    t = texts(fig)
    if case == "diverged":
        assert "NaN/Inf from step" in t
        assert fig.axes[0].get_yscale() == "log"
    if case == "empty":
        assert "run a training step" in t


def test_gradcheck_figure():
    class BadSquare(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x  # planted bug: should be 2 * x

    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bad = gradcheck(BadSquare.apply, x)
    assert not bad.passed
    save(gw.gradcheck_figure(bad), "gradcheck_failed")
    good = gradcheck(torch.sin, x)
    save(gw.gradcheck_figure(good), "gradcheck_passed")
    empty = gw.gradcheck_figure(None)
    save(empty, "gradcheck_empty")
    assert "no gradient check yet" in texts(empty)


def test_every_figure_draws_on_given_axes(runs):
    w = runs["planted"]
    fig = style.new_figure(18, 12)
    grid = fig.subplot_mosaic([["flow", "flow", "heat"], ["dist", "hist", "dead"], ["curves", "gc1", "gc2"]])
    assert gw.gradient_flow(w, ax=grid["flow"]) is fig
    assert gw.heatmap(w, ax=grid["heat"]) is fig
    assert gw.distribution(w, "features.0", ax=grid["dist"]) is fig
    assert gw.histogram(w, "features.0", ax=grid["hist"]) is fig
    assert gw.dead_units(w, "features.3", ax=grid["dead"]) is fig
    assert gw.training_curves(w, ax=grid["curves"], metrics=("loss", "total_grad_norm")) is fig
    report = gradcheck(torch.tanh, torch.randn(4, 3, dtype=torch.float64))
    assert gw.gradcheck_figure(report, ax=[grid["gc1"], grid["gc2"]]) is fig
    save(fig, "all_on_given_axes")


def test_views_render_from_saved_tables(runs, tmp_path):
    """Compute and render stay apart: tables saved to disk are enough, no model, no watcher."""
    w = runs["planted"]
    w.layers().to_csv(tmp_path / "layers.csv", index=False)
    w.history("grad_norm").to_csv(tmp_path / "grad_norm.csv")
    w.steps().to_csv(tmp_path / "steps.csv", index=False)
    layers = pd.read_csv(tmp_path / "layers.csv", keep_default_na=False, na_values=["NaN", "nan", ""])
    layers["layer"] = layers["layer"].fillna("").astype(str)
    hist = pd.read_csv(tmp_path / "grad_norm.csv", index_col="step")
    hist.columns = [str(c) if not c.startswith("Unnamed") else "" for c in hist.columns]
    steps = pd.read_csv(tmp_path / "steps.csv")
    findings = pd.DataFrame([{"step": 3, "last_step": 19, "count": 17, "layer": "features.3", "kind": "dead_units",
                              "severity": "warning", "message": "10 of 16 units never fired", "hint": "",
                              "phase": "forward", "op": "", "source": "", "value": 0.62, "threshold": 0.5},
                             {"step": 0, "last_step": 19, "count": 20, "layer": "features.0",
                              "kind": "vanishing_gradient", "severity": "warning", "message": "tiny",
                              "hint": "", "phase": "backward", "op": "", "source": "", "value": 0.0,
                              "threshold": 1e-6}])
    fig = gw.gradient_flow(layers, findings=findings)
    save(fig, "gradient_flow_from_tables_with_findings")
    bold = [lab.get_text() for lab in fig.axes[0].get_xticklabels() if lab.get_fontweight() == "bold"]
    assert set(bold) == {"features.3", "features.0"}
    assert "2 flagged layer(s)" in fig.axes[0].get_title("left")
    save(gw.heatmap(hist, findings=findings), "heatmap_from_tables")
    save(gw.training_curves(steps), "training_curves_from_tables")
    hists = [w.histogram("features.0", of="activation", step=s) for s in w.histogram_steps("features.0", "activation")]
    save(gw.distribution(hists), "distribution_from_histograms")


def test_non_finite_only_histograms_never_crash():
    edges = np.concatenate([-np.logspace(0, -3, 5), [0.0], np.logspace(-3 + 0.75, 0, 4)])
    h = gs.Histogram(layer="x", of="grad", step=0, edges=edges, counts=np.zeros(8, dtype=np.int64), zero=0,
                     nan=10, posinf=3, neginf=1)
    for fig in (gw.histogram(h), gw.distribution([h])):
        assert "NaN" in texts(fig)


def test_short_names_for_deep_models():
    assert style.short_name("") == "(model)"
    assert style.short_name("fc1") == "fc1"
    s = style.short_name("encoder.layers.11.attention.self.query", 28)
    assert len(s) <= 28 and "11" in s and s.endswith("query")
    names = [f"encoder.layers.{i}.attention.self.query" for i in range(120)]
    short = style.short_names(names, 22)
    assert len(set(short)) == len(names) and max(map(len, short)) <= 22


def test_summary_html(runs):
    html = runs["planted"]._repr_html_() if hasattr(runs["planted"], "_repr_html_") else ""
    mine = gw.watcher_html(runs["planted"])
    assert "gradsight" in mine and "20 steps" in mine and "<svg" in mine
    assert html  # the watcher has its own; it should call watcher_html (see report)
    found = pd.DataFrame([{"step": 4, "last_step": 9, "count": 6, "layer": "fc1", "kind": "exploding_gradient",
                           "severity": "warning", "message": "norm 1e4 <b>", "op": ""}])
    table = gw.findings_html(found)
    assert "exploding_gradient" in table and "4–9 (×6)" in table and "&lt;b&gt;" in table
    empty = gw.watcher_html(runs["empty"])
    assert "0 steps" in empty and "No findings" in empty


def test_importing_gradsight_loads_no_view_library():
    code = ("import sys, gradsight, gradsight.widgets; "
            "bad = [m for m in ('matplotlib', 'ipywidgets') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_compare_lines_name_the_rank_of_a_job_s_findings():
    from gradsight.widgets.compare import finding_line

    row = {"severity": "error", "kind": "nan_origin", "layer": "net.0", "step": 7, "last_step": 7}
    assert finding_line(pd.Series(row)) == "ERROR    nan_origin at net.0, step 7"
    assert finding_line(pd.Series(row | {"rank": 1.0})).endswith("step 7 [rank 1]")
    assert "[rank" not in finding_line(pd.Series(row | {"rank": float("nan")}))  # names no single rank
