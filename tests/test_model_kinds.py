"""The kinds of models and training loops capture must handle (issue 2, "It must work with")."""

import dataclasses
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.utils.checkpoint as cp
from torch import nn

import gradsight as gs


def one_step(model, w, x, loss_fn=lambda out: out.float().pow(2).mean()):
    loss = loss_fn(model(x))
    loss.backward()
    w.step(loss)
    return loss


def row(w, layer):
    return w.layers().set_index("layer").loc[layer]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        self.skip = nn.Linear(8, 8)

    def forward(self, x):
        return self.inner(x) + self.skip(x)


def test_nested_custom_modules_use_qualified_names():
    model = nn.Sequential(Block(), Block(), nn.Linear(8, 2))
    with gs.watch(model) as w:
        one_step(model, w, torch.randn(4, 8))
        df = w.layers()
    assert "1.inner.0" in set(df["layer"]) and "0.skip" in set(df["layer"])
    assert df.set_index("layer").loc["1.inner.0", "grad_norm"] > 0


@dataclasses.dataclass
class DataOut:
    logits: torch.Tensor
    extra: list


class ModelOutputLike(OrderedDict):
    """What Hugging Face's ModelOutput is: an OrderedDict subclass (and a dataclass)."""


class MultiOut(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(6, 3)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        return {"tuple": (a, b), "list": [a, b], "dict": {"a": a, "b": b},
                "dataclass": DataOut(a, [b, 3]), "modeloutput": ModelOutputLike(a=a, b=b, n=None)}[self.kind]


@pytest.mark.parametrize("kind", ["tuple", "list", "dict", "dataclass", "modeloutput"])
def test_container_outputs_are_summarised_whole(kind):
    model = MultiOut(kind)

    def loss_fn(out):
        if kind == "dataclass":
            return out.logits.sum() + out.extra[0].pow(2).sum()
        parts = out.values() if isinstance(out, dict) else out
        return sum(p.pow(2).sum() for p in parts if isinstance(p, torch.Tensor))

    with gs.watch(model) as w:
        one_step(model, w, torch.randn(5, 6), loss_fn)
        r = row(w, "")
        rec = w.last_record()
    assert rec.act_numel[0] == 5 * 4 + 5 * 3  # both tensors of the output
    assert r["grad_norm"] > 0 and r["act_norm"] > 0


def test_shared_layer_called_twice_counts_both_calls():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(torch.tanh(self.lin(x)))

    model = Shared()
    outs = []
    model.lin.register_forward_hook(lambda m, a, o: outs.append(o.detach().clone()))
    with gs.watch(model) as w:
        one_step(model, w, torch.randn(3, 4))
        r = row(w, "lin")
        assert w.last_record().act_numel[1] == 2 * 3 * 4
    both = torch.cat([o.reshape(-1) for o in outs]).double()
    assert r["act_norm"] == pytest.approx(both.norm().item(), rel=1e-5)
    assert r["act_max"] == pytest.approx(both.max().item())


def test_inplace_relu_after_a_module():
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(inplace=True), nn.Linear(16, 1))
    pre = {}
    model[0].register_forward_hook(lambda m, a, o: pre.__setitem__("out", o.detach().clone()))
    with gs.watch(model, histogram_every=1) as w:
        one_step(model, w, torch.randn(32, 6))
        lin, relu = row(w, "0"), row(w, "1")
        assert w.errors == []
    assert lin["act_min"] == pytest.approx(pre["out"].min().item())  # seen before the in-place ReLU
    assert lin["act_min"] < 0 and relu["act_min"] == 0
    # the gradient w.r.t. the Linear output is masked by the ReLU; w.r.t. the ReLU output it is not
    assert lin["grad_zero_frac"] > 0.2 and relu["grad_zero_frac"] == 0


def test_no_grad_and_eval_forwards_are_not_training_steps():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Linear(4, 1))
    with gs.watch(model) as w:
        with torch.no_grad():
            model(torch.randn(2, 4))
        model.eval()
        model(torch.randn(2, 4)).sum().backward()
        model.train()
        with pytest.warns(gs.GradsightWarning, match=r"in eval\(\) mode .*call model.train\(\)"):  # never silently empty
            w.step()
        assert w.last_record().forward_order == []
        one_step(model, w, torch.randn(2, 4))
        assert w.last_record().act_numel[1] == 2 * 4


def test_gradient_accumulation_merges_backward_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    xs = [torch.randn(3, 4) for _ in range(3)]
    grads = []

    def keep_grad(m, a, o):
        o.register_hook(lambda g: grads.append(g.clone()))

    model[2].register_forward_hook(keep_grad)
    with gs.watch(model, histogram_every=1) as w:
        for x in xs:
            model(x).sum().backward()
        w.step()
        r = row(w, "2")
        rec = w.last_record()
    assert rec.backward_passes == 3 and rec.forward_passes == 3
    g = torch.cat([x.reshape(-1) for x in grads]).double()
    assert r["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-5)
    # parameter gradient norm is the accumulated total (what optimizer.step sees)
    total = torch.cat([p.grad.reshape(-1) for p in model[0].parameters()]).norm().item()
    assert w.layers().set_index("layer").loc["0", "param_grad_norm"] == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_is_not_counted_twice(reentrant):
    class CkptNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
            self.head = nn.Linear(6, 1)

        def forward(self, x):
            return self.head(cp.checkpoint(self.block, x, use_reentrant=reentrant))

    model = CkptNet()
    x = torch.randn(4, 6, requires_grad=reentrant)
    with gs.watch(model) as w:
        one_step(model, w, x)
        rec = w.last_record()
        r = row(w, "block.0")
        assert w.errors == []
    assert rec.act_numel[w.layer_names.index("block.0")] == 4 * 6  # once, not twice
    assert r["grad_norm"] > 0


def test_frozen_parameters_have_weights_but_no_gradients():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    for p in model[0].parameters():
        p.requires_grad_(False)
    with gs.watch(model) as w:
        one_step(model, w, torch.randn(3, 4))
        frozen, live = row(w, "0"), row(w, "2")
    assert frozen["param_norm"] > 0 and np.isnan(frozen["param_grad_norm"])
    assert live["param_grad_norm"] > 0


def test_multihead_attention_out_proj_gets_parameters_and_the_attention_output():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    model = Attn()
    with gs.watch(model, histogram_every=1) as w:
        one_step(model, w, torch.randn(2, 5, 16))
        attn, out_proj = row(w, "attn"), row(w, "attn.out_proj")
    assert out_proj["param_norm"] > 0 and out_proj["param_grad_norm"] > 0
    assert out_proj["act_norm"] == pytest.approx(attn["act_norm"]) and attn["act_norm"] > 0
    assert out_proj["grad_norm"] == pytest.approx(attn["grad_norm"]) and attn["grad_norm"] > 0


def test_dataparallel_wrapper():
    inner = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    model = nn.DataParallel(inner)  # on CPU it calls the module directly
    with gs.watch(model) as w:
        one_step(model, w, torch.randn(3, 4))
        assert row(w, "module.0")["grad_norm"] > 0


def test_distributed_data_parallel_wrapper(tmp_path):
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)))
        with gs.watch(model) as w:
            for _ in range(2):
                one_step(model, w, torch.randn(3, 4))
            r = row(w, "module.2")
            assert w.errors == []
        assert r["grad_norm"] > 0 and r["param_grad_norm"] > 0
    finally:
        dist.destroy_process_group()


def test_torch_compile_warns_once_and_keeps_parameter_statistics():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    compiled = torch.compile(model, backend="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = gs.watch(compiled)
        for _ in range(2):
            one_step(compiled, w, torch.randn(3, 4))
    ours = [c for c in caught if issubclass(c.category, gs.GradsightWarning)]
    assert len(ours) >= 1 and "torch.compile" in str(ours[0].message)
    df = w.layers().set_index("layer")
    assert df.loc["0", "param_grad_norm"] > 0  # never silently empty
    w.close()


def test_bf16_autocast_keeps_dtypes_and_reports_them():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    with gs.watch(model) as w:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.randn(4, 8))
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        w.step()
        assert w.layers().set_index("layer").loc["0", "dtype"] == "bfloat16"
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_every_n_steps():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    with gs.watch(model, every=2) as w:
        for _ in range(5):
            one_step(model, w, torch.randn(3, 4))
        assert list(w.history("grad_norm").index) == [0, 2, 4]


def test_a_deep_copy_of_a_watched_model_trains_without_touching_the_watcher():
    """copy.deepcopy copies the module hook tables: the copy's forwards (an EMA or a MAML inner
    loop trains one) must not write into the watched model's step."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = gs.watch(model, optimizer=opt)
    x = torch.randn(16, 4)

    def step(m, o, inp):
        o.zero_grad()
        m(inp).square().mean().backward()
        o.step()

    step(model, opt, x)
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.01)
    opt.zero_grad()
    with torch.no_grad():  # not a training forward
        act = model[0](x)  # what the watched model's first layer will output this step
    step(twin, twin_opt, torch.full((16, 4), float("nan")))  # the copy sees NaN, between two real steps
    step(model, opt, x)
    assert w.step_count == 2 and w.findings().empty
    rec = w.last_record()
    assert rec.act_numel[1] == act.numel() and rec.forward_passes == 1
    assert w.layers().set_index("layer").loc["0", "act_norm"] == pytest.approx(act.norm().item(), rel=1e-5)
    w.close()


@pytest.mark.parametrize("case", ["wgan-gp", "pinn"])
def test_an_autograd_grad_to_the_inputs_is_not_a_training_backward(case):
    """A gradient penalty (WGAN-GP) or a PINN's derivatives run autograd.grad through the model
    before the loss's backward: that pass must neither count as a backward (the next forward
    closed a 'skipped' step) nor merge its output gradients into the step's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    w = gs.watch(model, optimizer=opt)
    seen = {}
    for s in range(4):
        opt.zero_grad()
        x = torch.randn(32, 3, requires_grad=True)
        u = model(x)
        du, = torch.autograd.grad(u.sum(), x, create_graph=True)
        if case == "wgan-gp":
            loss = u.mean() + 10 * ((du.norm(dim=1) - 1) ** 2).mean()
        else:  # a PINN residual: u' = cos(x0)
            loss = ((du[:, 0] - torch.cos(x[:, 0])) ** 2).mean() + u.square().mean()
        if s == 3:  # the loss's gradient w.r.t. the model output
            u.register_hook(lambda g: seen.__setitem__("u", g.detach().clone()))
        loss.backward()
        opt.step()
    assert w.step_count == 4 and w.findings().empty, w.findings()[["kind", "message"]]
    rec = w.last_record()
    assert rec.backward_passes == 1
    assert w.layers().set_index("layer").loc["", "grad_norm"] == pytest.approx(seen["u"].norm().item(), rel=1e-5)
    w.close()


def test_a_torchscript_submodule_is_a_row_of_parameters_and_never_an_error():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return torch.relu(self.lin(x))

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script's own
        model = nn.Sequential(torch.jit.script(Block()), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.warns(gs.GradsightWarning, match="'0' is a TorchScript module"):
        w = gs.watch(model, optimizer=opt, histogram_every=1, nan_trace="op")
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
    assert not w.errors
    table = w.layers().set_index("layer")
    assert list(table.index) == ["", "0", "1"]  # not the scripted module's insides
    grad = torch.cat([model[0].lin.weight.grad.flatten(), model[0].lin.bias.grad.flatten()]).norm().item()
    assert table.loc["0", "param_grad_norm"] == pytest.approx(grad, rel=1e-5)
    assert np.isnan(table.loc["0", "act_norm"]) and table.loc["1", "act_norm"] > 0
    w.close()
    with pytest.raises(TypeError, match="TorchScript module, which takes no Python hooks"):
        gs.watch(model[0])


def test_a_complex_parameter_is_measured_and_histogrammed_by_its_real_and_imaginary_parts():
    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4, dtype=torch.cfloat))
            self.out = nn.Linear(4, 1)

        def forward(self, x):
            return self.out((x.to(torch.cfloat) @ self.w).abs())

    torch.manual_seed(0)
    model = Spectral()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "casting complex to real discards" must not reach the user
        w = gs.watch(model, optimizer=opt, histogram_every=1)
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
    table = w.layers().set_index("layer")
    assert table.loc["", "param_norm"] == pytest.approx(model.w.norm().item(), rel=1e-5)
    assert w.histogram("", of="weight").total == 2 * 16  # real and imaginary parts
    w.close()
