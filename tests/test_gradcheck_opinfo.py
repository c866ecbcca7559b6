"""Agreement with torch.autograd.gradcheck on a sample of PyTorch's own OpInfo database.

Each op's first float64 CPU sample input is checked by both checkers (full mode,
same eps/atol/rtol), once as is and once with a planted bug (the op's output passed
through an identity whose backward scales the gradient by 1.1), so that agreement
is measured on failing verdicts too. Ops torch itself cannot check (it raises
something other than its GradcheckError) and random ops are skipped. The agreement
rate is printed (`pytest -s`) and must stay high.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.autograd.gradcheck import GradcheckError as TorchGradcheckError
from torch.utils._pytree import tree_flatten, tree_map

from gradsight.gradcheck import GradcheckError, gradcheck

pytest.importorskip("expecttest")  # op_db needs it

N_OPS = 40
MAX_INPUT_ELEMENTS = 100
RANDOM_WORDS = ("dropout", "rand", "bernoulli", "normal", "multinomial", "uniform", "poisson", "exponential",
                "cauchy", "geometric", "log_normal")


class _ScaledGrad(torch.autograd.Function):
    """Identity whose backward is off by a factor: a planted bug any checker must catch."""

    generate_vmap_rule = True

    @staticmethod
    def forward(t):
        return t.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g * 1.1


def _plant(out):
    return tree_map(lambda t: _ScaledGrad.apply(t) if isinstance(t, torch.Tensor) and t.is_floating_point() else t,
                    out)


def _sample_ops():
    """(op, first sample) for N_OPS ops spread over the database, with small sample inputs."""
    from torch.testing._internal.common_methods_invocations import op_db

    ops = sorted(
        (op for op in op_db
         if op.supports_autograd and torch.float64 in op.supported_dtypes("cpu")
         and not any(w in op.name for w in RANDOM_WORDS)),
        key=lambda op: (op.name, op.variant_test_name),
    )
    step = max(1, len(ops) // N_OPS)
    spread = [op for start in range(step) for op in ops[start::step]]  # every step-th op first
    picked = []
    for op in spread:
        sample = next(iter(op.sample_inputs("cpu", torch.float64, requires_grad=True)), None)
        if sample is None:
            continue
        size = sum(t.numel() for t in tree_flatten((sample.input, sample.args))[0] if isinstance(t, torch.Tensor))
        if size <= MAX_INPUT_ELEMENTS:  # torch's checker takes seconds on larger ones
            picked.append((op, sample))
        if len(picked) == N_OPS:
            break
    return picked


def _torch_verdict(fn, args):
    try:
        return torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5, rtol=1e-3)
    except TorchGradcheckError:
        return False


@pytest.mark.filterwarnings("ignore::UserWarning")  # deprecation notes from some sample generators
def test_agreement_with_torch_on_opinfo_sample():
    agree, total, skipped, disagreements = {True: 0, False: 0}, {True: 0, False: 0}, [], []
    for op, sample in _sample_ops():
        args = (sample.input, *sample.args)
        kwargs = dict(sample.kwargs)
        for correct in (True, False):

            def fn(*a, op=op, kwargs=kwargs, post=sample.output_process_fn_grad, correct=correct):
                out = post(op(*a, **kwargs))
                return out if correct else _plant(out)

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    theirs = _torch_verdict(fn, args)
                except Exception as e:  # torch itself cannot check this op
                    skipped.append(f"{op.name}: {type(e).__name__}")
                    break
                try:
                    ours = gradcheck(fn, *args).passed
                except GradcheckError as e:
                    ours = f"error: {str(e)[:80]}"
            total[correct] += 1
            if ours == theirs:
                agree[correct] += 1
            else:
                disagreements.append(f"{op.name}{'' if correct else ' (planted bug)'}: torch {theirs}, gradsight {ours}")
    n, a = sum(total.values()), sum(agree.values())
    rate = a / max(n, 1)
    print(f"\nOpInfo agreement: {a}/{n} = {rate:.1%} (as is: {agree[True]}/{total[True]}, with a planted "
          f"bug: {agree[False]}/{total[False]}; skipped {len(skipped)}: {skipped})")
    for d in disagreements:
        print("  disagree:", d)
    assert total[True] >= 30, f"too few ops compared ({total[True]}); skipped: {skipped}"
    assert rate >= 0.95, disagreements
