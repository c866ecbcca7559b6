"""GradcheckReport: frame, JSON, notebook table and plot read well and carry the verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from gradsight.gradcheck import GradcheckError, gradcheck
from gradsight.gradcheck.report import FRAME_COLUMNS


class BadWeightGrad(torch.autograd.Function):
    """x @ w.T whose weight gradient is scaled by 0.5 in its last columns."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.T

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gw = g.T @ x
        gw[:, 2:] *= 0.5
        return g @ w, gw


class BadLinear(nn.Linear):
    def forward(self, x):
        return BadWeightGrad.apply(x, self.weight) + self.bias


@pytest.fixture(scope="module")
def failing():
    torch.manual_seed(0)
    return gradcheck(BadLinear(5, 4), torch.randn(3, 5))


@pytest.fixture(scope="module")
def passing():
    torch.manual_seed(0)
    return gradcheck(nn.Linear(5, 4), torch.randn(3, 5))


def test_frame_has_the_contract_columns_one_row_per_tensor(failing):
    df = failing.to_frame()
    assert list(df.columns) == FRAME_COLUMNS == [
        "name", "shape", "passed", "max_abs_err", "max_rel_err", "worst_index", "output", "analytic", "numeric"]
    assert list(df["name"]) == ["x", "weight", "bias"]
    assert list(df["passed"]) == [True, False, True]
    w = df.iloc[1]
    assert w["shape"] == (4, 5) and w["worst_index"][1] >= 2  # the bug is in columns 2..4
    assert list(df["output"]) == ["out"] * 3  # one output: every worst entry lies in it
    assert w["max_abs_err"] == pytest.approx(abs(w["analytic"] - w["numeric"]))
    assert w["max_rel_err"] == pytest.approx(0.5, rel=1e-4)  # analytic is half the numeric value


def test_to_dict_is_strict_json_and_small(failing):
    d = failing.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert len(text) < 4000  # no Jacobians
    assert d["passed"] is False and d["mode"] == "full"
    assert (d["eps"], d["atol"], d["rtol"]) == (1e-6, 1e-5, 1e-3)
    row = d["rows"][1]
    assert row["name"] == "weight" and row["passed"] is False
    assert isinstance(row["analytic"], float) and isinstance(row["worst_index"], list)
    assert all(type(v) in (str, int, float, bool, list, type(None)) for r in d["rows"] for v in r.values())


def test_to_dict_turns_non_finite_numbers_into_none(failing):
    from copy import deepcopy

    r = deepcopy(failing)
    r.rows[0].max_rel_err = float("inf")
    json.dumps(r.to_dict(), allow_nan=False)
    assert r.to_dict()["rows"][0]["max_rel_err"] is None


def test_html_table_names_verdict_and_where(failing, passing):
    html = failing._repr_html_()
    assert "FAIL" in html and "✓ pass" in html
    assert "∂out[" in html and "∂weight[" in html
    assert html.count("<tr>") == 1 + 3
    assert "tensor(" not in html  # no Jacobian dumps
    assert "✓ passed" in passing._repr_html_() and "FAIL" not in passing._repr_html_()


def test_html_stays_small_for_a_big_jacobian():
    report = gradcheck(lambda x: x.sin() * 1.0001, torch.randn(60, 60, dtype=torch.float64), samples=200)
    assert len(report._repr_html_()) < 3000


def test_repr_is_one_short_line(failing):
    text = repr(failing)
    assert "\n" not in text and len(text) < 200
    assert text.startswith("GradcheckReport(FAILED") and "weight FAIL" in text and "x ok" in text


def test_plot_shows_worst_tensor(failing):
    fig = failing.plot()
    left, right = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][:2]
    assert "'weight' FAILED" in fig._suptitle.get_text()
    assert left.get_xlabel().startswith("numeric") and left.get_ylabel().startswith("analytic")
    assert "weight" in right.get_title() and "outside tolerance" in right.get_title()
    assert len(fig.axes) == 3  # scatter, heatmap, colorbar


def test_plot_other_tensor_into_given_axes(failing, passing):
    from matplotlib.figure import Figure

    fig = Figure()
    axes = fig.subplots(1, 2)
    out = failing.plot("bias", ax=axes)
    assert out is fig and "'bias' passed" in fig._suptitle.get_text()
    fig2 = Figure()
    assert passing.plot(fig=fig2) is fig2
    with pytest.raises(GradcheckError, match="no checked tensor named"):
        failing.plot("nope")


def test_plot_fast_mode_projection_only():
    fig = gradcheck(torch.sin, torch.randn(4, dtype=torch.float64), mode="fast").plot()
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("projection only" in t for t in texts)


def test_plot_data_is_bounded():
    report = gradcheck(lambda x: x.tanh() * 2, torch.randn(120, 100, dtype=torch.float64), samples=300)
    pd_ = report.rows[0].plot_data
    assert pd_.sample_analytic.size <= 4096 + 8 and pd_.element_err.size == 300
    assert np.isfinite(pd_.sample_numeric).all()
