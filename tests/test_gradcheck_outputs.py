"""Output classification: only differentiable outputs are compared, by torch.autograd.gradcheck's rules,
and the report says what each output was and which output the worst entry lies in."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch.autograd.gradcheck import GradcheckError as TorchGradcheckError

from gradsight.gradcheck import gradcheck
from gradsight.gradcheck.outputs import AUXILIARY, DIFFERENTIABLE, INTEGER, NOT_DIFFERENTIABLE

MODES = ["full", "fast"]


def f64(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def torch_verdict(fn, *args):
    args = tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5, rtol=1e-3)
        except TorchGradcheckError:
            return False


def kinds(report):
    return [o.kind for o in report.outputs]


class SinAndScale(torch.autograd.Function):
    """(sin x, 2x) with the second output marked non-differentiable: its gradient is not defined."""

    @staticmethod
    def forward(ctx, x):
        scaled = 2 * x
        ctx.mark_non_differentiable(scaled)
        ctx.save_for_backward(x)
        return x.sin(), scaled

    @staticmethod
    def backward(ctx, g, _):
        (x,) = ctx.saved_tensors
        return g * x.cos()


class SinAndScaleBug(SinAndScale):
    @staticmethod
    def backward(ctx, g, _):
        (x,) = ctx.saved_tensors
        return g * x.cos() * 1.5


def layer_norm(x, w, b):
    return torch.native_layer_norm(x, [4], w, b, 1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_native_layer_norm_mean_and_rstd_are_not_compared(mode):
    args = (f64(3, 4), f64(4, seed=1), f64(4, seed=2))
    report = gradcheck(layer_norm, *args, mode=mode)
    assert report.passed, report  # before: mean and rstd compared against backward's zero, and failed
    assert kinds(report) == [DIFFERENTIABLE, NOT_DIFFERENTIABLE, NOT_DIFFERENTIABLE]
    assert [o.compared for o in report.outputs] == [True, False, False]
    assert set(report.to_frame()["output"]) == {"out[0]"}
    assert torch_verdict(layer_norm, *args) is True


@pytest.mark.parametrize("mode", MODES)
def test_mark_non_differentiable_output_is_skipped_and_a_bug_still_caught(mode):
    x = f64(5)
    ok = gradcheck(SinAndScale.apply, x, mode=mode)
    assert ok.passed and kinds(ok) == [DIFFERENTIABLE, NOT_DIFFERENTIABLE]
    assert torch_verdict(SinAndScale.apply, x) is True
    bad = gradcheck(SinAndScaleBug.apply, x, mode=mode)
    assert bad.failed == ["x"] and bad.rows[0].output == "out[0]"
    assert bad.rows[0].worst_output.startswith("out[0]") and "out[0]" in bad.rows[0].where()
    assert torch_verdict(SinAndScaleBug.apply, x) is False


def test_integer_and_auxiliary_outputs_are_listed_not_compared():
    report = gradcheck(lambda x: {"m": torch.frexp(x), "n": 3, "tag": "a"}, f64(4))
    assert report.passed
    assert [(o.name, o.kind, o.compared) for o in report.outputs] == [
        ("out['m'][0]", DIFFERENTIABLE, True), ("out['m'][1]", INTEGER, False),
        ("out['n']", AUXILIARY, False), ("out['tag']", AUXILIARY, False)]
    frame = report.outputs_frame()
    assert list(frame["kind"]) == kinds(report) and list(frame["compared"]) == [True, False, False, False]
    assert frame.iloc[1]["dtype"] == "int32" and frame.iloc[1]["shape"] == [4]


@pytest.mark.parametrize("mode", MODES)
def test_without_differentiable_output_numeric_must_be_zero_as_in_torch(mode):
    def detached(x):
        return x.detach() * 2  # the user lost the graph: every derivative silently zero

    def constant(x):
        return (x * 0).detach()

    x = f64(3)
    bad = gradcheck(detached, x, mode=mode)
    assert not bad.passed and kinds(bad) == [NOT_DIFFERENTIABLE] and bad.outputs[0].compared
    assert "detached" in bad.rows[0].note
    assert torch_verdict(detached, x) is False
    good = gradcheck(constant, x, mode=mode)
    assert good.passed and torch_verdict(constant, x) is True


def test_output_classification_matches_torchs_rule():
    """Compared outputs are exactly those torch's _differentiable_outputs keeps (requires_grad)."""
    x = f64(3, 4).requires_grad_()
    fns = [
        lambda t: torch.max(t, dim=1),
        lambda t: torch.linalg.slogdet(t[:, :3]),
        lambda t: torch.native_batch_norm(t, None, None, None, None, True, 0.1, 1e-5),
        lambda t: torch.native_group_norm(t.reshape(3, 2, 2), None, None, 3, 2, 2, 1, 1e-5),
        lambda t: (t.sin(), t.detach().cos()),
    ]
    for fn in fns:
        outs = fn(x)
        float_outs = [o for o in outs if o.is_floating_point()]
        report = gradcheck(fn, x.detach())
        compared = [o.compared for o in report.outputs if o.kind in (DIFFERENTIABLE, NOT_DIFFERENTIABLE)]
        assert compared == [o.requires_grad for o in float_outs], report.outputs
        assert report.passed


def test_frame_output_column_and_dict_name_the_output_of_the_worst_entry():
    class TwoOut(torch.autograd.Function):
        """(x * y, x + y) whose backward of the second output is wrong for y."""

        @staticmethod
        def forward(ctx, x, y):
            ctx.save_for_backward(x, y)
            return x * y, x + y

        @staticmethod
        def backward(ctx, g1, g2):
            x, y = ctx.saved_tensors
            return g1 * y + g2, g1 * x + 2 * g2

    report = gradcheck(TwoOut.apply, f64(3), f64(3, seed=1))
    frame = report.to_frame()
    assert list(frame["passed"]) == [True, False]
    assert frame.iloc[1]["output"] == "out[1]"
    worst = report.worst()
    assert worst.name == "y" and worst.where().startswith("∂out[1][") and "∂y[" in worst.where()
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["rows"][1]["output"] == "out[1]"
    assert [o["kind"] for o in d["outputs"]] == [DIFFERENTIABLE, DIFFERENTIABLE]
    assert "∂out[1]" in repr(report)


def test_html_says_which_outputs_were_not_compared():
    html = gradcheck(layer_norm, f64(3, 4), f64(4, seed=1), f64(4, seed=2))._repr_html_()
    assert "not compared" in html and "out[1] (not differentiable)" in html
    assert "not compared" not in gradcheck(torch.sin, f64(3))._repr_html_()
