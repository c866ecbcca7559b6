"""The analytic Jacobian: batched backward passes give exactly the rows (and columns) of a
naive one-output-at-a-time loop, run the backward kernels once per chunk rather than once
per row, and fall back (to autograd's own batching, then a loop) where vmap cannot run the
backward, without changing a verdict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.gradcheck import ConvFn
from gradsight.gradcheck import gradcheck
from gradsight.gradcheck.evaluate import Evaluator
from gradsight.gradcheck.inputs import CallSpec
from gradsight.gradcheck.jacobian import AnalyticJacobian
from gradsight.gradcheck.rng import ForkedRNG


def f64(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class NumpyBackwardExp(torch.autograd.Function):
    """exp(x) with a backward through numpy (scaled by ``slope``): no batching can run it, only a loop."""

    slope = 1.0

    @staticmethod
    def forward(ctx, x):
        y = x.exp()
        ctx.save_for_backward(y)
        return y

    @classmethod
    def backward(cls, ctx, g):
        (y,) = ctx.saved_tensors
        return torch.from_numpy(np.multiply(cls.slope * y.detach().numpy(), g.detach().numpy()))


class NumpyBackwardExpBug(NumpyBackwardExp):
    slope = 0.5


class ItemBackwardScale(torch.autograd.Function):
    """x * s with a backward that reads s through .item(): vmap refuses, autograd's batching copes."""

    @staticmethod
    def forward(ctx, x, s):
        ctx.save_for_backward(s)
        return x * s

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        return g * s.item(), None


class CountOps(TorchDispatchMode):
    def __init__(self, op):
        super().__init__()
        self.op, self.n = op, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func.overloadpacket is self.op
        return func(*args, **(kwargs or {}))


def analytic(fn, *args):
    """(AnalyticJacobian, its rows J[i] for every checked tensor)."""
    spec = CallSpec(fn, args, None)
    with ForkedRNG(0, spec.devices) as rng:
        ev = Evaluator(spec, rng, atol=1e-5, eps=1e-6)
        aj = AnalyticJacobian(ev, torch.Generator().manual_seed(0))
        M = ev.layout.size
        J = aj.rows(torch.arange(M), [torch.arange(b.numel()) for b in ev.bases])
    return aj, J


def naive_rows(fn, args):
    """One plain backward pass per output element."""
    leaves = [a.detach().clone().requires_grad_() for a in args]
    y = fn(*leaves).reshape(-1)
    rows = [[] for _ in leaves]
    for r in range(y.numel()):
        grads = torch.autograd.grad(y[r], leaves, retain_graph=True, allow_unused=True)
        for i, g in enumerate(grads):
            rows[i].append(torch.zeros(leaves[i].numel(), dtype=torch.float64) if g is None else g.reshape(-1))
    return [torch.stack(r) for r in rows]


def test_conv_rows_come_from_one_batched_backward_per_chunk_and_equal_the_naive_loop():
    x, w = f64(2, 3, 5, 5), f64(4, 3, 3, 3, seed=1)
    with CountOps(torch.ops.aten.convolution_backward) as count:
        aj, J = analytic(ConvFn.apply, x, w)
    assert aj.batched_ok
    # 200 output rows: one chunk (input and weight grads: 2 kernels), plus the plain-pass checks (4).
    # autograd's is_grads_batched would run the kernels once per row here: 400+.
    assert count.n <= 8, count.n
    for got, want in zip(J, naive_rows(ConvFn.apply, (x, w)), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn, args", [
    (NumpyBackwardExp.apply, (f64(7),)),
    (ItemBackwardScale.apply, (f64(3, 4), f64((), seed=1))),
    (lambda a, b: (a @ b).tanh(), (f64(3, 4), f64(4, 2, seed=1))),
], ids=["numpy-backward", "item-backward", "builtin-ops"])
def test_rows_equal_the_naive_loop_whichever_batching_runs(fn, args):
    _, J = analytic(fn, *args)
    for got, want in zip(J, naive_rows(fn, args), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_backward_vmap_cannot_batch_still_gives_the_right_verdicts():
    assert gradcheck(NumpyBackwardExp.apply, f64(7)).passed
    bad = gradcheck(NumpyBackwardExpBug.apply, f64(7))
    assert bad.failed == ["x"] and bad.rows[0].max_rel_err == pytest.approx(0.5, rel=1e-3)
    assert gradcheck(ItemBackwardScale.apply, f64(3, 4).requires_grad_(), f64((), seed=1)).passed  # x only


def test_columns_by_double_backward_equal_the_naive_rows():
    a, b = f64(3, 4), f64(4, 5, seed=1)
    fn = lambda a, b: (a @ b).sin()  # noqa: E731
    spec = CallSpec(fn, (a, b), None)
    with ForkedRNG(0, spec.devices) as rng:
        ev = Evaluator(spec, rng, atol=1e-5, eps=1e-6)
        aj = AnalyticJacobian(ev, torch.Generator().manual_seed(0))
        cols = [aj.columns(i, torch.arange(t.numel())) for i, t in enumerate(ev.bases)]
    for got, want in zip(cols, naive_rows(fn, (a, b)), strict=True):
        np.testing.assert_allclose(got.numpy(), want.T.numpy(), rtol=1e-12, atol=1e-12)
