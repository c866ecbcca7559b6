"""Empty, zero-dim, non-contiguous, expanded and overlapping inputs: torch's verdict, or a clear error."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.autograd.gradcheck import GradcheckError as TorchGradcheckError

from gradsight.gradcheck import GradcheckError, gradcheck

MODES = ["full", "fast"]


def f64(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def torch_verdict(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.autograd.gradcheck(fn, tuple(a.requires_grad_() for a in args), eps=1e-6, atol=1e-5,
                                            rtol=1e-3)
        except TorchGradcheckError:
            return False


class ScaledGrad(torch.autograd.Function):
    """Identity with a backward off by 10%: the planted bug."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, g):
        return g * 1.1


def buggy_sin(x):
    return ScaledGrad.apply(x.sin())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fn", [torch.sin, torch.exp, lambda x: x @ x.T, lambda x: torch.cat([x, x * 2])],
                         ids=["sin", "exp", "mm", "cat"])
def test_empty_input_passes_like_torch(fn, mode):
    x = f64(0, 3)
    report = gradcheck(fn, x, mode=mode)  # before: ZeroDivisionError in full mode
    assert report.passed and report.rows[0].shape == (0, 3)
    assert torch_verdict(fn, x.clone()) is True


@pytest.mark.parametrize("mode", MODES)
def test_linear_on_an_empty_batch_passes_like_torch(mode):
    layer = nn.Linear(3, 2).double()
    report = gradcheck(layer, f64(0, 3), mode=mode)
    assert report.passed and [r.name for r in report.rows] == ["input", "weight", "bias"]
    assert torch_verdict(lambda x, w, b: nn.functional.linear(x, w, b), f64(0, 3), f64(2, 3), f64(2)) is True


@pytest.mark.parametrize("mode", MODES)
def test_empty_output_and_zero_dim_tensors(mode):
    assert gradcheck(lambda x: x[:0] * 2, f64(4), mode=mode).passed  # an empty Jacobian: nothing can be wrong
    assert gradcheck(lambda x, y: x * y, f64(()), f64(3, seed=1), mode=mode).passed
    assert gradcheck(lambda x: x.sum(), f64(3), mode=mode).rows[0].shape == (3,)
    bad = gradcheck(buggy_sin, f64(()), mode=mode)
    assert not bad.passed and torch_verdict(buggy_sin, f64(())) is False


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("view", [lambda t: t.T, lambda t: t[:, ::2], lambda t: t.unsqueeze(0).transpose(0, 2)],
                         ids=["transposed", "strided", "permuted"])
def test_non_contiguous_inputs_same_verdict_as_torch(view, mode):
    x = view(f64(4, 6))
    assert not x.is_contiguous()
    assert gradcheck(torch.sin, x, mode=mode).passed and torch_verdict(torch.sin, view(f64(4, 6))) is True
    assert not gradcheck(buggy_sin, x, mode=mode).passed and torch_verdict(buggy_sin, view(f64(4, 6))) is False


@pytest.mark.parametrize("mode", MODES)
def test_expanded_input_is_refused_with_what_to_pass_instead(mode):
    x = f64(3).expand(4, 3)
    with pytest.raises(GradcheckError, match=r"'input' is expanded \(stride 0 in dim 0\).*x\.contiguous\(\)"):
        gradcheck(torch.sin, x, mode=mode)
    with pytest.raises(RuntimeError, match="stride 0"):  # torch refuses it too
        torch.autograd.gradcheck(torch.sin, (x.detach().requires_grad_(),))
    assert gradcheck(torch.sin, f64(3, 1).expand(3, 1), mode=mode).passed  # size 1: no element is shared
    assert gradcheck(torch.sin, x.contiguous(), mode=mode).passed  # the suggested fix works


def test_overlapping_view_is_refused_where_torch_gives_a_wrong_verdict():
    x = f64(10).as_strided((3, 3), (2, 1))  # rows overlap: x[0, 2] is x[1, 0]
    with pytest.raises(GradcheckError, match=r"overlap in memory.*strides \(2, 1\)"):
        gradcheck(torch.sin, x)
    # torch perturbs shared memory and fails a correct function: a refusal is the honest answer
    assert torch_verdict(torch.sin, f64(10).as_strided((3, 3), (2, 1))) is False
    assert gradcheck(torch.sin, f64(10).as_strided((3, 3), (3, 1))).passed  # a non-overlapping view is fine


def test_expanded_parameter_is_refused_too():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3, dtype=torch.float64).expand(2, 3))

        def forward(self, x):
            return x * self.w

    with pytest.raises(GradcheckError, match="'w' is expanded"):
        gradcheck(Scale(), f64(2, 3))
