"""Agreement with torch.autograd.gradcheck over PyTorch's own OpInfo database.

Every op that supports autograd in float64 on the CPU, every sample input up to
``MAX_SAMPLE_ELEMENTS`` elements, as is and with a planted bug (its differentiable outputs
pass through an identity whose backward scales the gradient by 1.1), so that agreement is
measured on failing verdicts too; see benchmarks/gradcheck_opinfo.py for how each sample
is called and what counts as agreement. ``make test`` runs a fixed, seeded subset;
``make test-slow`` (``pytest -m slow``) the whole database. Every disagreement must be
one that benchmarks/results/gradcheck.md lists and explains.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("expecttest")  # op_db needs it

from benchmarks.gradcheck_opinfo import MAX_SAMPLE_ELEMENTS, agrees, cases, run_case, summarize  # noqa: E402

EXPLAINED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gradcheck.md"
SUBSET = {"ops_every": 6, "every": 12, "seed": 0}
"""The make-test subset: a seeded sixth of the ops, a twelfth of their samples (under a minute of CPU)."""


def _explained_ops() -> set[str]:
    """Op names in the disagreement table of gradcheck.md (first column, in backticks)."""
    text = EXPLAINED.read_text()
    section = text[text.index("## OpInfo agreement"):]
    return set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.M))


def _check(outcomes):
    s = summarize(outcomes)
    print(f"\nOpInfo agreement on {s['torch_can_check']} samples torch can check (of {s['samples']}, "
          f"samples up to {MAX_SAMPLE_ELEMENTS} elements): full {s['full_rate']:.2%}, fast {s['fast_rate']:.2%}")
    for o in outcomes:
        if o.torch != "error" and not (agrees(o.torch, o.full) and agrees(o.torch, o.fast)):
            print(f"  {o.key}: torch {o.torch}, full {o.full}, fast {o.fast}: {o.full_msg[:100]}")
    assert not s["crash"], f"gradsight raised something other than GradcheckError: {s['crash']}"
    assert s["full_rate"] >= 0.99, s["full_disagree"]
    assert s["fast_rate"] >= 0.98, s["fast_disagree"]
    explained = _explained_ops()
    unexplained = {k for k in s["full_disagree"] + s["fast_disagree"]
                   if k.split("#")[0] not in explained}
    assert not unexplained, f"disagreements not explained in {EXPLAINED.name}: {sorted(unexplained)}"
    return s


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_agreement_with_torch_on_a_seeded_opinfo_subset():
    outcomes = [run_case(c, torch_fast=False) for c in cases(**SUBSET)]
    s = _check(outcomes)
    assert s["torch_can_check"] >= 200, "the subset should cover a few hundred samples"
    assert any(o.torch == "fail" for o in outcomes), "planted bugs must give failing verdicts to compare"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_agreement_with_torch_on_the_whole_opinfo_database():
    _check([run_case(c, torch_fast=False) for c in cases()])
