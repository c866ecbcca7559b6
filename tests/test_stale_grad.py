"""``stale_grad``: a forgotten ``zero_grad`` is named at the first step it matters, with or
without ``optimizer=``, through clipping and ``every=``; every correct way to zero (or to
accumulate on purpose before one update) stays silent."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradsight as gs


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


X, Y = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)), torch.randn(32, 2)


def _loss(m):
    return nn.functional.mse_loss(m(X), Y)


def _kinds(w):
    return list(w.findings()["kind"])


@pytest.mark.filterwarnings("ignore::gradsight.GradsightWarning")
@pytest.mark.parametrize("how", ["optimizer", "w.step", "clipped", "every=3"])
def test_a_forgotten_zero_grad_is_named_at_the_first_step_it_matters(how):
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    w = gs.watch(m, optimizer=None if how == "w.step" else opt, every=3 if how == "every=3" else 1)
    for _ in range(7):
        _loss(m).backward()
        if how == "clipped":
            nn.utils.clip_grad_norm_(m.parameters(), 0.1)  # changes .grad in place before the step
        opt.step()
        if how == "w.step":
            w.step()
    f = w.findings()
    f = f[f["kind"] != "clipping"] if how == "clipped" else f  # clipping to 0.1 every step is a finding too
    assert list(f["kind"]) == ["stale_grad"], f[["kind", "message"]]
    row = f.iloc[0]
    assert row["severity"] == "warning" and row["step"] == (3 if how == "every=3" else 1)
    assert "'0.weight'" in row["message"] and "zero_grad" in row["hint"]
    w.close()


def test_zeroing_again_ends_the_episode():
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with pytest.warns(gs.GradsightWarning, match="not zeroed"):
        w = gs.watch(m, optimizer=opt)
        for s in range(8):
            if s >= 4:
                opt.zero_grad()
            _loss(m).backward()
            opt.step()
    row = w.findings().iloc[0]
    assert (row["kind"], row["step"], row["last_step"], row["count"]) == ("stale_grad", 1, 3, 3)
    w.close()


def _zero_before_forward(m, opt, s):
    opt.zero_grad()
    _loss(m).backward()
    opt.step()


def _zero_between_forward_and_backward(m, opt, s):
    loss = _loss(m)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _zero_after_step(m, opt, s):
    _loss(m).backward()
    opt.step()
    opt.zero_grad()


def _zero_in_place(m, opt, s):
    opt.zero_grad(set_to_none=False)
    _loss(m).backward()
    opt.step()


def _model_zero_grad(m, opt, s):
    m.zero_grad()
    _loss(m).backward()
    opt.step()


def _zero_through_data(m, opt, s):  # old style: bumps no version counter
    for p in m.parameters():
        if p.grad is not None:
            p.grad.data.zero_()
    _loss(m).backward()
    opt.step()


def _grads_set_to_none_by_hand(m, opt, s):
    for p in m.parameters():
        p.grad = None
    _loss(m).backward()
    opt.step()


def _accumulate_four_then_step(m, opt, s):
    for _ in range(4):
        (_loss(m) / 4).backward()
    opt.step()
    opt.zero_grad()


def _lbfgs(m, opt, s):
    def closure():
        opt.zero_grad()
        loss = _loss(m)
        loss.backward()
        return loss

    opt.step(closure)


@pytest.mark.parametrize("loop", [_zero_before_forward, _zero_between_forward_and_backward, _zero_after_step,
                                  _zero_in_place, _model_zero_grad, _zero_through_data, _grads_set_to_none_by_hand,
                                  _accumulate_four_then_step, _lbfgs], ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("opt_kind", ["sgd", "adam-foreach", "adam-fused"])
def test_every_correct_way_to_zero_stays_silent(loop, opt_kind):
    m = _model()
    if loop is _lbfgs:
        if opt_kind != "sgd":
            pytest.skip("LBFGS is its own optimizer")
        opt = torch.optim.LBFGS(m.parameters(), lr=0.1, max_iter=2)
    elif opt_kind == "sgd":
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    else:
        opt = torch.optim.Adam(m.parameters(), lr=1e-3, **({"fused": True} if opt_kind == "adam-fused"
                                                           else {"foreach": True}))
    w = gs.watch(m, optimizer=opt)
    for s in range(6):
        loop(m, opt, s)
    assert "stale_grad" not in _kinds(w)
    w.close()


def test_forgotten_zero_grad_is_caught_with_adam_too():
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)
    w = gs.watch(m, optimizer=opt)
    with pytest.warns(gs.GradsightWarning, match="not zeroed"):
        for _ in range(3):
            _loss(m).backward()
            opt.step()
    assert _kinds(w) == ["stale_grad"]
    w.close()


@pytest.mark.filterwarnings("ignore::gradsight.GradsightWarning")
@pytest.mark.parametrize("forget", [False, True])
@pytest.mark.parametrize("given", ["G", "D"])
def test_a_gan_in_one_module_with_two_optimizers_stays_silent_unless_a_zero_grad_is_missing(given, forget):
    """D's backward does not reach G's parameters (the fake batch is detached): G's gradient from
    the last G step is still in .grad then, correctly, until optG.zero_grad() before G's backward."""
    torch.manual_seed(0)
    gan = nn.ModuleDict({"G": nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6)),
                         "D": nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))})
    gan.forward = lambda z: gan["D"](gan["G"](z))  # watched as one model
    opt_g = torch.optim.Adam(gan["G"].parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(gan["D"].parameters(), lr=1e-3)
    w = gs.watch(gan, optimizer=opt_g if given == "G" else opt_d)
    bce = nn.functional.binary_cross_entropy_with_logits
    for _ in range(5):
        real, z = torch.randn(16, 6), torch.randn(16, 4)
        fake = gan["G"](z)
        if not (forget and given == "D"):
            opt_d.zero_grad()
        d_real, d_fake = gan["D"](real), gan["D"](fake.detach())
        (bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))).backward()
        opt_d.step()
        if not (forget and given == "G"):
            opt_g.zero_grad()
        d_fake = gan["D"](fake)
        bce(d_fake, torch.ones_like(d_fake)).backward()
        opt_g.step()
    assert ("stale_grad" in _kinds(w)) == forget
    w.close()
