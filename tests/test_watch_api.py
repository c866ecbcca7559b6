"""The public API contract of issue 2: names, columns and meanings users rely on."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradsight as gs


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))


def train(model, w, steps=3, opt=None, call_step=True):
    opt = opt or torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 10, generator=g)
        y = torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if call_step:
            w.step(loss=loss)
        losses.append(loss.item())
    return losses


def test_layers_table_names_and_statistics():
    m = mlp()
    with gs.watch(m) as w:
        train(m, w, steps=1)
        df = w.layers()
    assert list(df["layer"]) == [name for name, _ in m.named_modules()]
    for col in ["layer", "type", "act_mean", "act_std", "act_min", "act_max", "act_norm", "act_zero_frac",
                "act_nan", "act_posinf", "act_neginf", "grad_mean", "grad_std", "grad_min", "grad_max",
                "grad_norm", "grad_zero_frac", "grad_nan", "grad_posinf", "grad_neginf", "param_norm",
                "param_grad_norm", "update_norm", "update_ratio"]:
        assert col in df.columns, col
    row = df.set_index("layer").loc["0"]
    assert row["type"] == "Linear"
    assert row["param_norm"] == pytest.approx(float(torch.cat([p.detach().reshape(-1) for p in m[0].parameters()]).norm()),
                                              rel=1e-5)
    assert row["param_grad_norm"] > 0 and row["update_norm"] > 0
    assert row["update_ratio"] == pytest.approx(row["update_norm"] / row["param_norm"])
    relu = df.set_index("layer").loc["1"]
    assert 0.2 < relu["act_zero_frac"] < 0.8 and relu["act_min"] == 0


def test_activation_statistics_match_the_real_output():
    m = mlp()
    seen = {}
    m[2].register_forward_hook(lambda mod, a, out: seen.__setitem__("out", out.detach().clone()))
    with gs.watch(m) as w:
        train(m, w, steps=1)
        row = w.layers().set_index("layer").loc["2"]
    out = seen["out"].double()
    assert row["act_mean"] == pytest.approx(out.mean().item(), rel=1e-4, abs=1e-6)
    assert row["act_std"] == pytest.approx(out.std(unbiased=False).item(), rel=1e-4)
    assert row["act_norm"] == pytest.approx(out.norm().item(), rel=1e-5)
    assert row["act_max"] == pytest.approx(out.max().item())


def test_output_gradient_statistics_match_autograd():
    m = mlp()
    grads = {}

    def keep(mod, a, out):
        out.register_hook(lambda g: grads.__setitem__("g", g.detach().clone()))

    m[2].register_forward_hook(keep)
    with gs.watch(m) as w:
        train(m, w, steps=1)
        row = w.layers().set_index("layer").loc["2"]
    g = grads["g"].double()
    assert row["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-5)
    assert row["grad_mean"] == pytest.approx(g.mean().item(), rel=1e-3, abs=1e-9)


def test_history_and_steps():
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    with gs.watch(m, optimizer=opt) as w:
        losses = train(m, w, steps=5, opt=opt)
        h = w.history("grad_norm")
        steps = w.steps()
        loss = w.history("loss")
    assert list(h.index) == [0, 1, 2, 3, 4]
    assert list(h.columns) == w.layer_names
    assert (h["0"] > 0).all()
    assert np.allclose(steps["loss"], losses)
    assert np.allclose(loss["loss"], losses)
    assert (steps["lr"] == 0.05).all()
    assert (steps["forward_s"] > 0).all() and (steps["total_grad_norm"] > 0).all()


def test_optimizer_closes_steps_automatically():
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with gs.watch(m, optimizer=opt) as w:
        train(m, w, steps=4, opt=opt, call_step=False)
        assert w.step_count == 4
        assert len(w.history("grad_norm")) == 4


def test_histogram_contract():
    m = mlp()
    with gs.watch(m, histogram_every=2, bins=32) as w:
        train(m, w, steps=5)
        assert w.histogram_steps("2", of="grad") == [0, 2, 4]
        h = w.histogram("2", of="grad")
        assert h.step == 4 and len(h.counts) == 32 and len(h.edges) == 33
        assert h.total == 16 * 32  # batch x features
        assert w.histogram("2", of="activation", step=2).step == 2
        hw = w.histogram("0", of="weight")
        assert hw.total == 10 * 32 + 32
        with pytest.raises(ValueError, match="histogram"):
            w.histogram("1", of="weight")  # ReLU has no weights
        with pytest.raises(ValueError, match="of="):
            w.histogram("2", of="gradient")


def test_findings_has_the_contract_columns():
    m = mlp()
    with gs.watch(m) as w:
        train(m, w, steps=2)
        f = w.findings()
    assert isinstance(f, pd.DataFrame)
    for col in ["step", "layer", "kind", "severity", "message"]:
        assert col in f.columns


def test_bad_input_errors_say_what_and_what_to_do():
    with pytest.raises(TypeError, match="nn.Module"):
        gs.watch(lambda x: x)
    with pytest.raises(ValueError, match="no parameters"):
        gs.watch(nn.ReLU())
    with pytest.raises(ValueError, match="every"):
        gs.watch(mlp(), every=0)
    with pytest.raises(ValueError, match="histogram_every"):
        gs.watch(mlp(), histogram_every=-1)
    with pytest.raises(TypeError, match="optimizer"):
        gs.watch(torch.optim.SGD(mlp().parameters(), lr=1))
    m = mlp()
    with gs.watch(m) as w:
        train(m, w, steps=1)
        with pytest.raises(ValueError, match="no layer named 'fc1'"):
            w.histogram("fc1")
        with pytest.raises(ValueError, match="Did you mean"):
            w.histogram("3.")
        with pytest.raises(ValueError, match="unknown metric"):
            w.history("gradnorm")
        with pytest.raises(TypeError, match="layer name"):
            w.histogram(3)


def test_loss_may_be_a_float_or_scalar_tensor_but_not_a_vector():
    m = mlp()
    with gs.watch(m) as w:
        train(m, w, steps=1, call_step=False)
        with pytest.raises(ValueError, match="scalar"):
            w.step(loss=torch.ones(3))
        w.step(loss=1.5)
        assert w.steps()["loss"].iloc[-1] == 1.5


def test_html_summary_and_repr():
    m = mlp()
    with gs.watch(m) as w:
        train(m, w, steps=1)
        assert "gradsight" in w._repr_html_() and "Sequential" in repr(w)


def test_unit_history_keeps_a_window_of_per_unit_activity():
    m = mlp()
    with gs.watch(m) as w:
        train(m, w, steps=4)
        u = w.unit_history("1")
        assert list(u.index) == [0, 1, 2, 3] and u.shape[1] == 32
        # the per-unit max equals the real ReLU output's max over the batch
        x = torch.randn(5, 10)
        out = m[1](m[0](x)).detach()
        m(x).sum().backward()
        w.step()
        assert np.allclose(w.unit_history("1").iloc[-1].to_numpy(), out.amax(0).numpy())
        with pytest.raises(ValueError, match="ReLU-family"):
            w.unit_history("0")
