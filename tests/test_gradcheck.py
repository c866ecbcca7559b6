"""gs.gradcheck: planted bugs are caught on exactly the wrong tensor, correct code passes,
user objects are left untouched, and each tricky case is handled or explained."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.gradcheck import GradcheckError as TorchGradcheckError

from gradsight.gradcheck import GradcheckError, GradcheckReport, gradcheck, recent_reports
from gradsight.gradcheck.full import MAX_FULL_ELEMENTS

MODES = ["full", "fast"]


def f64(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# -- custom Functions: one correct, three with planted bugs -------------------------------------------

class MatMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g @ b.T, a.T @ g


class MatMulMissingTranspose(MatMul):
    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        return g @ b, a.T @ g  # grad of a should be g @ b.T


class CubeTimes(torch.autograd.Function):
    """x**3 * y."""

    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return x**3 * y

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return 3 * x**2 * y * g, x**3 * g


class CubeTimesMissingFactor(CubeTimes):
    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return x**2 * y * g, x**3 * g  # the factor 3 is missing in the grad of x


class MulWrongSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return x * y

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return g * y, -g * x  # grad of y has the wrong sign


class Tanh2(torch.autograd.Function):
    """setup_context style with a generated vmap rule: the batched (vmap) path runs it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w):
        return torch.tanh(x * w) ** 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        t = torch.tanh(x * w)
        d = g * 2 * t * (1 - t * t)
        return d * w, d * x


@pytest.mark.parametrize("mode", MODES)
def test_correct_functions_pass(mode):
    a, b = f64(3, 4).requires_grad_(), f64(4, 5, seed=1).requires_grad_()
    report = gradcheck(MatMul.apply, a, b, mode=mode)
    assert report.passed and bool(report)
    assert [r.name for r in report.rows] == ["a", "b"]
    assert gradcheck(CubeTimes.apply, f64(6), f64(6, seed=1), mode=mode).passed
    assert gradcheck(Tanh2.apply, f64(5, 3), f64(5, 3, seed=1), mode=mode).passed


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "fn, wrong",
    [(CubeTimesMissingFactor.apply, "x"), (MatMulMissingTranspose.apply, "a"), (MulWrongSign.apply, "y")],
    ids=["missing-factor", "missing-transpose", "wrong-sign"],
)
def test_planted_bug_fails_on_exactly_the_wrong_tensor(fn, wrong, mode):
    report = gradcheck(fn, f64(4, 4), f64(4, 4, seed=1) + 0.5, mode=mode)
    assert not report.passed
    assert report.failed == [wrong]
    row = next(r for r in report.rows if r.name == wrong)
    assert row.worst_index is not None and len(row.worst_index) == 2  # element-wise, also in fast mode
    assert abs(row.analytic - row.numeric) == pytest.approx(row.max_abs_err)


class Tanh2Bug(Tanh2):
    """The grad of x is right; the grad of w is half what it should be."""

    @staticmethod
    def backward(ctx, g):
        dx, dw = Tanh2.backward(ctx, g)
        return dx, 0.5 * dw


def test_wrong_tensor_named_with_setup_context_function_in_vmap_path():
    report = gradcheck(Tanh2Bug.apply, f64(5, 3), f64(5, 3, seed=1))
    assert report.batched  # ran through vmap
    assert report.failed == ["w"]


class NumpySin(torch.autograd.Function):
    """Correct, but its forward goes through numpy, which vmap cannot batch."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.from_numpy(np.sin(x.detach().numpy()))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.cos()


def test_classic_function_is_batched_and_left_as_it_was():
    report = gradcheck(MatMul.apply, f64(2, 3), f64(3, 2))
    assert report.passed and report.batched
    assert "apply" not in MatMul.__dict__  # the forward-only apply is removed again
    bad = gradcheck(lambda a, b: MatMulMissingTranspose.apply(a, b).exp(), f64(3, 3), f64(3, 3, seed=1))
    assert bad.batched and bad.failed == ["a"]
    assert "apply" not in MatMulMissingTranspose.__dict__


def test_function_vmap_cannot_run_falls_back_to_a_loop_and_says_so():
    report = gradcheck(NumpySin.apply, f64(6))
    assert report.passed and not report.batched
    assert any("one call at a time" in n for n in report.notes)
    assert "apply" not in NumpySin.__dict__
    bad = gradcheck(lambda x: NumpySin.apply(x) * MulWrongSign.apply(torch.ones_like(x), x), f64(6))
    assert bad.failed == ["x"] and not bad.batched


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: nn.Linear(5, 3), f64(4, 5)),
        (lambda: nn.Conv2d(2, 3, 3), f64(1, 2, 5, 5)),
        (lambda: nn.LayerNorm(6), f64(3, 6)),
        (lambda: nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), f64(3, 4)),
        (lambda: nn.GRU(3, 2, batch_first=True), f64(2, 3, 3)),
    ],
    ids=["linear", "conv2d", "layernorm", "sequential", "gru"],
)
def test_builtin_layers_pass_and_list_inputs_then_parameters(make, x, mode):
    torch.manual_seed(0)
    layer = make()
    report = gradcheck(layer, x, mode=mode)
    assert report.passed, report
    names = [r.name for r in report.rows]
    assert names[0] == "input"
    assert names[1:] == [n for n, _ in layer.named_parameters()]
    assert [r.kind for r in report.rows] == ["input"] + ["parameter"] * (len(names) - 1)


class ScaledLinear(nn.Module):
    """Linear followed by a learned per-feature scale whose backward has the wrong sign."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.tensor([0.5, 2.0, -1.0]))

    def forward(self, x):
        return MulWrongSign.apply(self.inner(x), self.scale)


@pytest.mark.parametrize("mode", MODES)
def test_broken_module_parameter_is_named(mode):
    report = gradcheck(ScaledLinear(), f64(2, 3), mode=mode)
    assert [r.name for r in report.rows] == ["x", "scale", "inner.weight", "inner.bias"]  # named_parameters order
    assert report.failed == ["scale"]
    frozen = ScaledLinear()
    frozen.scale.requires_grad_(False)
    frozen.inner.weight.requires_grad_(False)
    report = gradcheck(frozen, f64(2, 3), mode=mode)
    assert [r.name for r in report.rows] == ["x", "inner.bias"] and report.passed


def test_only_inputs_that_require_grad_are_checked_when_any_does():
    x, y = f64(3).requires_grad_(), f64(3, seed=1)
    report = gradcheck(lambda x, y: x * y, x, y)
    assert [r.name for r in report.rows] == ["x"]
    assert [r.name for r in gradcheck(lambda x, y: x * y, x.detach(), y).rows] == ["x", "y"]


# -- user objects are left untouched -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_checked_in_float64_and_left_untouched(dtype):
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to(dtype).train()
    x = torch.randn(5, 4).to(dtype).requires_grad_()
    x.grad = torch.full_like(x, 7.0)  # gradients from the user's own backward stay as they were
    layer[0].weight.grad = torch.full_like(layer[0].weight, 3.0)
    params = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    x_before = x.detach().clone()
    rng = torch.get_rng_state()

    report = gradcheck(layer, x)

    assert report.passed, report
    assert all(r.dtype == str(dtype).replace("torch.", "") for r in report.rows)
    assert x.dtype == dtype and x.requires_grad and torch.equal(x.grad, torch.full_like(x, 7.0))
    assert torch.equal(x.detach(), x_before)
    for k, v in layer.state_dict().items():  # parameters and buffers (running stats, counter)
        assert v.dtype == params[k].dtype and torch.equal(v, params[k]), k
    assert torch.equal(layer[0].weight.grad, torch.full_like(layer[0].weight, 3.0))
    assert all(p.grad is None for name, p in layer.named_parameters() if name != "0.weight")
    assert torch.equal(torch.get_rng_state(), rng)
    assert layer.training


def test_batchnorm_train_mode_running_stats_unchanged():
    bn = nn.BatchNorm2d(3).double().train()
    before = {k: v.clone() for k, v in bn.named_buffers()}
    report = gradcheck(bn, f64(4, 3, 2, 2))
    assert report.passed
    for k, v in bn.named_buffers():
        assert torch.equal(v, before[k]), k


# -- randomness ----------------------------------------------------------------------------------------

def test_dropout_is_replayed_per_evaluation_and_rng_untouched():
    layer = nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.5)).double().train()
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    report = gradcheck(layer, f64(3, 6))
    assert report.passed
    assert torch.equal(torch.get_rng_state(), rng)
    # Without replaying, the same dropout makes finite differences meaningless: the control.
    with pytest.raises(TorchGradcheckError):
        torch.autograd.gradcheck(lambda x: nn.functional.dropout(x, 0.5), (f64(3, 6).requires_grad_(),))


def test_same_seed_same_report_different_seed_different_mask():
    fn = lambda x: nn.functional.dropout(x, 0.5) * 3  # noqa: E731
    a = gradcheck(fn, f64(20), seed=1).to_dict()
    b = gradcheck(fn, f64(20), seed=1).to_dict()
    c = gradcheck(fn, f64(20), seed=2).to_dict()
    for d in (a, b, c):
        d.pop("seconds")
    assert a == b
    assert a["rows"][0]["worst_index"] != c["rows"][0]["worst_index"] or a["rows"] != c["rows"]


@pytest.mark.parametrize(
    "source",
    ["generator", "python"],
)
def test_nondeterministic_function_gives_clear_error(source):
    gen = torch.Generator().manual_seed(0)

    def fn(x):
        if source == "generator":
            return x * torch.rand(x.shape, generator=gen, dtype=x.dtype)
        return x * random.random()

    with pytest.raises(GradcheckError, match="not deterministic"):
        gradcheck(fn, f64(4))


# -- inputs and outputs people trip on ----------------------------------------------------------------

def test_in_place_op_on_input_is_fine_and_user_tensor_untouched():
    x = f64(5).requires_grad_()
    before = x.detach().clone()

    def fn(x):
        x.mul_(2)
        return x.exp()

    assert gradcheck(fn, x).passed
    assert torch.equal(x.detach(), before) and x.grad is None


@pytest.mark.parametrize("fn", [lambda x, w: NumpySin.apply(x * 2) @ w, lambda x, w: (x * 2).sin() @ w],
                         ids=["loop", "vmap"])
def test_in_place_op_on_input_across_many_chunks(monkeypatch, fn):
    from gradsight.gradcheck import jacobian as jac

    def writes(x, w):
        out = fn(x, w)
        x.add_(1)  # after use: must not leak into the next chunk's points
        return out

    monkeypatch.setattr(jac, "CHUNK_ELEMENTS", 400)  # chunks of 5 elements (10 points), one reused buffer
    report = gradcheck(writes, f64(6, 4), f64(4, 2, seed=1))
    assert report.passed, report
    assert report.batched == ("NumpySin" not in fn.__code__.co_names)


def test_in_place_op_that_breaks_backward_explains_the_fix():
    def fn(x):
        y = x.sin()  # sin saves x for backward
        x.add_(1)
        return y

    with pytest.raises(GradcheckError, match=r"in place.*clone"):
        gradcheck(fn, f64(3))


def test_int_and_bool_inputs_pass_through():
    def fn(x, idx, mask):
        return x[idx] * mask[: len(idx)]

    idx, mask = torch.tensor([2, 0, 1]), torch.tensor([True, False, True, True])
    report = gradcheck(fn, f64(4), idx, mask)
    assert report.passed
    assert [r.name for r in report.rows] == ["x"]
    assert idx.dtype == torch.int64 and mask.dtype == torch.bool
    emb = nn.Embedding(5, 2).double()
    assert [r.name for r in gradcheck(emb, torch.tensor([[1, 4], [0, 1]])).rows] == ["weight"]


def test_no_differentiable_input_is_a_clear_error():
    with pytest.raises(GradcheckError, match=r"nothing to check.*int64.*floating-point") as e:
        gradcheck(torch.sum, torch.arange(3))
    assert isinstance(e.value, ValueError)


def test_output_independent_of_an_input_passes_with_a_note():
    report = gradcheck(lambda x, y: x * 2, f64(3), f64(2))
    assert report.passed
    y = report.rows[1]
    assert y.name == "y" and y.max_abs_err == 0 and "do not depend" in y.note


def test_detached_path_fails_and_says_detached():
    report = gradcheck(lambda x, y: x + 3 * y.detach(), f64(3), f64(3, seed=1))
    assert report.failed == ["y"]
    assert "detached" in report.rows[1].note


def test_non_tensor_arguments_and_kwargs_pass_through():
    def fn(x, scale, how, opts, *, power=1):
        assert how == "sum" and opts == {"k": 1}
        return (x * scale) ** power

    report = gradcheck(fn, f64(3), 2.5, "sum", {"k": 1}, kwargs={"power": 3})
    assert report.passed and [r.name for r in report.rows] == ["x"]
    with pytest.raises(GradcheckError, match="kwargs must be a dict"):
        gradcheck(fn, f64(3), kwargs=[1])


def test_nested_inputs_are_named_by_path():
    report = gradcheck(lambda xs, d: torch.cat(xs) * d["w"], [f64(2), f64(3, seed=1)], {"w": f64(5, seed=2)})
    assert [r.name for r in report.rows] == ["xs[0]", "xs[1]", "d['w']"]
    assert report.passed
    one = gradcheck(lambda x, t: x * t[0], f64(3), (f64(3, seed=1),))  # as many leaves as arguments
    assert [r.name for r in one.rows] == ["x", "t[0]"] and one.passed


class TwoOut(torch.autograd.Function):
    """Returns (x * y, x + y); the backward of the second output is wrong for y."""

    @staticmethod
    def forward(x, y):
        return x * y, x + y

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g1, g2):
        x, y = ctx.saved_tensors
        return g1 * y + g2, g1 * x + 2 * g2


@pytest.mark.parametrize("wrap", ["tuple", "list", "dict"])
def test_several_outputs_name_the_wrong_one(wrap):
    def fn(x, y):
        p, s = TwoOut.apply(x, y)
        return {"prod": p, "sum": s, "n": 3} if wrap == "dict" else (list if wrap == "list" else tuple)((p, s))

    report = gradcheck(fn, f64(3), f64(3, seed=1))
    assert report.failed == ["y"]
    assert report.rows[1].worst_output.startswith("out['sum']" if wrap == "dict" else "out[1]")


def test_integer_outputs_are_ignored():
    report = gradcheck(lambda x: torch.max(x, dim=0), f64(4, 3))
    assert report.passed


def test_large_tensor_full_mode_suggests_fast_or_samples(monkeypatch):
    def fn(x):
        return x.sin().sum(1)

    with pytest.raises(GradcheckError, match=r"mode='fast'.*samples="):
        gradcheck(fn, f64(8, MAX_FULL_ELEMENTS // 8 + 1))

    from gradsight.gradcheck import fast as fast_mod
    from gradsight.gradcheck import full as full_mod

    # The same behaviour past a lowered bound, to keep the test fast.
    monkeypatch.setattr(full_mod, "MAX_FULL_ELEMENTS", 500)
    monkeypatch.setattr(fast_mod, "RECHECK_SAMPLES", 100)
    x = f64(8, 64)
    with pytest.raises(GradcheckError, match=r"mode='fast'.*samples="):
        gradcheck(fn, x)
    sampled = gradcheck(fn, x, samples=64)
    assert sampled.passed and sampled.rows[0].method == "64 random of 512 elements"
    assert gradcheck(fn, x, mode="fast").passed
    bad = gradcheck(lambda x: Tanh2Bug.apply(torch.ones_like(x), x).sum(1), x, mode="fast")
    assert bad.failed == ["x"] and bad.rows[0].worst_index is not None
    assert bad.rows[0].method == "projection, then 100 random of 512 elements"  # the precise re-check


def test_samples_on_a_large_output_compares_by_columns():
    x = f64(MAX_FULL_ELEMENTS + 1)
    report = gradcheck(torch.sin, x, samples=16)
    assert report.passed and report.rows[0].method == f"16 random of {x.numel():,} elements"
    bad = gradcheck(lambda x: CubeTimesMissingFactor.apply(x, torch.ones_like(x)), x, samples=16)
    assert bad.failed == ["x"]


class OnceSquare(torch.autograd.Function):
    """x * x with a backward that cannot be differentiated again, and misses the factor 2."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x


def test_samples_without_double_backward_fall_back_to_rows():
    x = f64(2000)
    report = gradcheck(lambda x: OnceSquare.apply(x) * 0 + x.sin(), x, samples=8)  # correct, needs rows
    assert report.passed
    bad = gradcheck(OnceSquare.apply, x, samples=8)
    assert bad.failed == ["x"]
    assert bad.rows[0].max_rel_err == pytest.approx(0.5, rel=1e-3)


def test_complex_inputs_and_non_finite_outputs_are_clear_errors():
    with pytest.raises(GradcheckError, match="complex one as its real and imaginary parts"):
        gradcheck(torch.abs, torch.randn(3, dtype=torch.complex128))
    with pytest.raises(GradcheckError, match="complex tensor"):
        gradcheck(torch.abs, torch.randn(3, dtype=torch.complex128, requires_grad=True))
    constant = gradcheck(lambda x, z: (x * z).abs(), f64(3), torch.randn(3, dtype=torch.complex128))
    assert [r.name for r in constant.rows] == ["x"] and constant.passed
    with pytest.raises(GradcheckError, match=r"NaN.*domain"):
        gradcheck(torch.log, -f64(3).abs())


def test_complex_outputs_are_checked_as_real_pairs():
    assert gradcheck(torch.fft.rfft, f64(8)).passed

    def bad(x):
        z = torch.fft.rfft(x)
        return torch.complex(z.real, MulWrongSign.apply(torch.ones_like(z.imag), z.imag))

    assert gradcheck(bad, f64(8)).failed == ["x"]


def test_float32_computation_inside_fn_is_noted():
    report = gradcheck(lambda x: x.float() * 2, f64(3))
    assert any("casts internally" in n for n in report.notes)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "slow"}, "mode must be 'full' or 'fast'"),
        ({"eps": -1e-6}, "eps must be a finite number > 0"),
        ({"eps": 0.5 + 0.5}, "eps is the finite-difference step"),
        ({"atol": float("nan")}, "atol must be"),
        ({"samples": 0}, "samples must be None"),
        ({"seed": 1.5}, "seed must be an int"),
    ],
)
def test_bad_arguments_are_explained(kwargs, match):
    with pytest.raises(GradcheckError, match=match):
        gradcheck(torch.sin, f64(3), **kwargs)


def test_not_callable_is_explained():
    with pytest.raises(GradcheckError, match="expected a callable"):
        gradcheck(f64(3), f64(3))


def test_agrees_with_torch_on_a_few_functions():
    cases = [(torch.sin, (f64(5),)), (MulWrongSign.apply, (f64(3), f64(3, seed=1))),
             (CubeTimesMissingFactor.apply, (f64(3), f64(3, seed=1))), (MatMul.apply, (f64(2, 3), f64(3, 2)))]
    for fn, args in cases:
        args = tuple(a.requires_grad_() for a in args)
        try:
            theirs = torch.autograd.gradcheck(fn, args)
        except TorchGradcheckError:
            theirs = False
        for mode in MODES:
            assert gradcheck(fn, *args, mode=mode).passed == theirs, (fn, mode)


def test_recent_reports_keeps_the_last_twenty():
    for _ in range(22):
        last = gradcheck(torch.sin, f64(2))
    reports = recent_reports()
    assert len(reports) == 20 and reports[-1] is last
    assert all(isinstance(r, GradcheckReport) for r in reports)
