"""Issue 12, cases 1-4: the model, the optimizer or the step sequence changes under the watcher.

Each test edits the model as a notebook would, trains on, and checks that what gradsight
reports for the current step equals a naive recomputation (naive_stats) and that the change
was named in one GradsightWarning.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from naive_stats import OutputNorms, batch, hook_count, mlp, param_norms, total_grad_norm
from torch import nn

import gradsight as gs
from gradsight import GradsightWarning


def train_step(model, opt, step, w=None, call_step=True):
    x, y = batch(step)
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    if w is not None and call_step:
        w.step(loss)
    return loss


def assert_matches_naive(w, model, probe=None):
    """The last recorded step's numbers equal the naive ones (read right after that step)."""
    layers = w.layers().set_index("layer")
    for name, norm in param_norms(model).items():
        assert layers.loc[name, "param_norm"] == pytest.approx(norm, rel=1e-4), name
    assert w.steps()["total_grad_norm"].iloc[-1] == pytest.approx(total_grad_norm(model), rel=1e-4)
    if probe is not None:
        for name in probe.sumsq:
            assert layers.loc[name, "act_norm"] == pytest.approx(probe.norm(name), rel=1e-4), name


def test_case1_replaced_parameter_is_followed():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, histogram_every=1)
    for s in range(2):
        train_step(model, opt, s)
    new = nn.Parameter(torch.randn_like(model[2].weight) * 2)
    model[2].weight = new
    opt.param_groups[0]["params"][2] = new
    with pytest.warns(GradsightWarning, match=r"model changed \(parameter '2.weight' was replaced\)"):
        train_step(model, opt, 2)
    assert_matches_naive(w, model)
    assert w.layers().set_index("layer").loc["2", "param_norm"] > 5  # the new weights (the old ones were ~2.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradsightWarning)  # said once
        train_step(model, opt, 3)
    assert_matches_naive(w, model)
    w.close()


def test_case2_added_module_is_counted():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, histogram_every=1)
    train_step(model, opt, 0)
    model.add_module("extra", nn.Linear(4, 4))
    opt.add_param_group({"params": model.extra.parameters()})
    with pytest.warns(GradsightWarning, match="was added"):
        train_step(model, opt, 1)
    assert "extra" in w.layer_names
    assert_matches_naive(w, model)
    assert w.history("param_norm")["0"].notna().sum() == 2  # layers that stayed keep their history
    w.close()


@pytest.mark.parametrize("keep_reference", [False, True])
def test_case2_removed_module_renames_layers_and_gradcheck_works(keep_reference):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, histogram_every=1)
    train_step(model, opt, 0)
    held = model[1]  # noqa: F841 - a removed module the user still holds is noticed too
    if not keep_reference:
        del held
    del model[1]  # Sequential renumbers: the old '2' is now '1'
    with pytest.warns(GradsightWarning, match="model changed"):
        train_step(model, opt, 1)
    assert w.layer_names == [n for n, _ in model.named_modules()]
    assert_matches_naive(w, model)
    report = w.gradcheck("3")  # the last Linear, formerly '4': names follow the model
    assert report.layer == "3" and report.passed
    w.close()


def test_case3_new_optimizer_while_a_scheduler_holds_the_old_one():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100)
    w = gs.watch(model, optimizer=opt)
    for s in range(3):
        train_step(model, opt, s)
        sched.step()
    opt2 = torch.optim.SGD(model.parameters(), lr=0.02)
    with pytest.warns(GradsightWarning, match="new SGD object"):
        for s in range(3, 13):
            train_step(model, opt2, s)
            sched.step()  # still the old optimizer's scheduler
    assert w.step_count == 13
    f = w.findings()
    assert "skipped_step" not in set(f["kind"]) if len(f) else True
    assert w.steps()["lr"].iloc[-1] == pytest.approx(0.02)
    w.close()


def test_case4_forgotten_step_is_closed_and_named():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, histogram_every=1)
    probe = OutputNorms(model)
    with pytest.warns(GradsightWarning, match=r"w.step\(\) is not being called"):
        for s in range(40):
            probe.reset()
            train_step(model, opt, s, w, call_step=False)
            if s == 20:
                want = {n: probe.norm(n) for n in probe.sumsq}
            if s == 21:
                # step 20 was closed when step 21's forward began: it holds one step only
                got = w.layers().set_index("layer")["act_norm"]
                assert all(got[n] == pytest.approx(v, rel=1e-4) for n, v in want.items())
    assert w.step_count == 39  # the 40th is still open
    assert len(w._capture._tensor_handles) <= len(w.layer_names)  # no hooks piling up
    probe.remove()
    w.close()


def test_case4_double_or_empty_step_does_not_shift_step_numbers():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, histogram_every=1)
    with pytest.warns(GradsightWarning, match="no training forward"):
        w.step()  # before any forward
        train_step(model, opt, 0, w)
        w.step()  # twice
        train_step(model, opt, 1, w)
    assert w.step_count == 2
    assert list(w.steps()["step"]) == [0, 1]
    w.close()


class Flaky(nn.Module):
    """Raises in the middle of the forward while ``fail`` is set (after its first layer ran)."""

    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.fail = False

    def forward(self, x):
        h = self.body[0](x)
        if self.fail:
            raise RuntimeError("flaky data")
        return self.body[1:](h)


def test_case4_forward_that_raised_and_is_retried_is_measured_once():
    model = Flaky()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, histogram_every=1)
    probe = OutputNorms(model)
    train_step(model, opt, 0)
    model.fail = True
    with pytest.raises(RuntimeError, match="flaky"):
        train_step(model, opt, 1)
    model.fail = False
    probe.reset()
    with pytest.warns(GradsightWarning, match="forward pass raised"):
        train_step(model, opt, 1)
    assert w.layers().set_index("layer").loc["body.0", "act_norm"] == pytest.approx(probe.norm("body.0"), rel=1e-4)  # not x sqrt(2)
    assert_matches_naive(w, model, probe)
    assert w.step_count == 2
    w.close()


def test_case4_interrupted_backward_is_discarded():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, histogram_every=1)
    probe = OutputNorms(model)
    train_step(model, opt, 0)
    x, y = batch(1)
    out = model[:3](x)
    out.register_hook(lambda g: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        nn.functional.mse_loss(model[3:](out), y).backward()
    probe.reset()
    with pytest.warns(GradsightWarning, match="backward pass was interrupted"):
        train_step(model, opt, 1)
    assert_matches_naive(w, model, probe)
    assert w.step_count == 2
    w.close()


def test_hooks_are_replaced_not_stacked_by_reindex():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt)
    base = hook_count(model)
    model.add_module("extra", nn.Linear(4, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_step(model, opt, 0)
    assert hook_count(model) == base + 1 + 2  # one forward hook and two parameter hooks for 'extra'
    w.close()
    assert hook_count(model) == 0


def test_training_in_eval_mode_still_counts_steps():
    """w.step() after a forward with gradients in eval() mode closes a real step (it is not an
    'empty' step): only the per-layer capture is off, as the empty-tables warning says."""
    model = mlp().eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model)
    with pytest.warns(GradsightWarning, match="eval"):
        for s in range(3):
            train_step(model, opt, s, w)
    assert w.step_count == 3
    w.close()
