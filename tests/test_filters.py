"""include=/exclude= (only selected modules get hooks) and on_nonfinite warn|raise|skip."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import gradsight as gs


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.0),
                         nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Linear(8, 1))


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _train(model, w=None, steps=3, nan_at=None, opt=None):
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
    for s in range(steps):
        opt.zero_grad()
        xb = x.clone()
        if s == nan_at:
            xb[3, 1] = float("nan")
        loss = ((model(xb) - y) ** 2).mean()
        loss.backward()
        opt.step()
        if w is not None and w._optimizer_ref is None:
            w.step(loss)
    return opt


def test_include_exclude_select_by_name_and_type_and_ancestors():
    m = _mlp()
    with gs.watch(m, include="3*", exclude="Tanh") as w:
        assert w.layer_names == ["", "3", "3.0"]  # the root always; '3' and its children but Tanh
        assert list(w.layers()["type"]) == ["Sequential", "Sequential", "Linear"]
        _train(m, w)
        grad_norm = w.history("grad_norm")
        assert list(grad_norm.columns) == ["", "3", "3.0"]
        assert grad_norm["3.0"].notna().all()
    with gs.watch(m, exclude=["Dropout", "ReLU"]) as w:
        assert "1" not in w.layer_names and "2" not in w.layer_names and "3.1" in w.layer_names


def test_unwatched_modules_get_no_hooks():
    m = _mlp()
    base = {n: len(mod._forward_hooks) for n, mod in m.named_modules()}
    with gs.watch(m, include="Linear"):
        hooked = {n for n, mod in m.named_modules() if len(mod._forward_hooks) > base[n]}
        assert hooked == {"", "0", "3.0", "4"}
    assert _hook_count(m) == sum(base.values())


def test_filters_bad_input_is_explained():
    with pytest.raises(ValueError, match="matched no module.*Close names"):
        gs.watch(_mlp(), include="3.O")
    with pytest.raises(TypeError, match="glob pattern"):
        gs.watch(_mlp(), include=3)
    with pytest.raises(ValueError, match="on_nonfinite"):
        gs.watch(_mlp(), on_nonfinite="stop")


def test_filtered_watch_is_bit_identical():
    a, b = _mlp(), _mlp()
    _train(a, steps=3)
    with gs.watch(b, include="3.*"):
        _train(b, steps=3)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("with_optimizer", [False, True])
def test_raise_names_layer_phase_step_and_keeps_the_batch(with_optimizer):
    m = _mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    w = gs.watch(m, on_nonfinite="raise", optimizer=opt if with_optimizer else None)
    before = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gs.GradsightWarning)
        with pytest.raises(gs.NonFiniteError) as info:
            _train(m, w, steps=2, opt=opt)  # healthy: nothing raised
            _train(m, w, steps=1, opt=opt)
            before = [p.detach().clone() for p in m.parameters()]
            _train(m, w, steps=1, nan_at=0, opt=opt)
    err = info.value
    assert (err.layer, err.phase, err.step) == ("0", "forward", 3)
    assert "'0'" in str(err) and "step 3" in str(err)
    assert isinstance(err.batch, tuple) and math.isnan(float(err.batch[0][3, 1]))
    assert not err.batch[0].requires_grad
    if with_optimizer:  # raised from optimizer.step() before it moved the weights
        assert all(torch.equal(p, q) for p, q in zip(before, m.parameters(), strict=True))
    w.close()


def test_no_batch_copy_unless_raise():
    m = _mlp()
    with gs.watch(m) as w:
        _train(m, w, steps=1)
        assert w._batch is None and w._capture.on_root_inputs is None


def test_skip_skips_the_step_and_steps_says_so():
    torch.manual_seed(1)
    m = _mlp()
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    w = gs.watch(m, optimizer=opt, on_nonfinite="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gs.GradsightWarning)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for s in range(4):
            opt.zero_grad()
            xb = x.clone()
            if s == 2:
                xb[0, 0] = float("nan")
            ((m(xb) - y) ** 2).mean().backward()
            before = [p.detach().clone() for p in m.parameters()]
            opt.step()
            moved = any(not torch.equal(p, q) for p, q in zip(before, m.parameters(), strict=True))
            assert moved == (s != 2)
            if s == 2:  # the user's gradients are given back after the skipped step
                assert all(p.grad is not None for p in m.parameters())
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert list(w.steps()["optimizer_stepped"]) == [1.0, 1.0, 0.0, 1.0]
    assert (w.steps()["grad_scale"] == 1.0).all()
    w.close()


def test_saved_bytes_with_include_or_exclude_go_to_the_watched_module_that_ran_them():
    """Bytes a module's forward saves are counted at the innermost watched module running:
    rows and the counter agree on indices whatever the filter (they were shifted before)."""
    def run(**kw):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        w = gs.watch(m, optimizer=opt, histogram_every=1, **kw)
        for _ in range(2):
            opt.zero_grad()
            m(torch.randn(16, 8)).sum().backward()
            opt.step()
        out = w.layers().set_index("layer")["saved_bytes"].to_dict()
        w.close()
        return out

    full = run()
    assert full == {"": 0.0, "0": 16 * 8 * 4, "1": 16 * 32 * 4, "2": 0.0, "3": 16 * 32 * 4, "4": 0.0}
    no_act = run(exclude=["ReLU", "Tanh"])  # their saved outputs belong to the root that ran them
    assert no_act == {"": 2 * 16 * 32 * 4, "0": 16 * 8 * 4, "2": 0.0, "4": 0.0}
    assert sum(run(include=["2", "4"]).values()) == sum(full.values())
