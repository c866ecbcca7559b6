"""nan_trace="op": the aten op and the user's source line of the first NaN/Inf, forward and
backward, in the finding; and the tracer itself leaves nothing behind."""

from __future__ import annotations

import inspect

import faulty_models as fm
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from gradsight.kernel_hooks.nan_trace import NanTracer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def line_of(marker: str) -> str:
    path = inspect.getsourcefile(fm)
    with open(path) as fh:
        hit = next(i for i, text in enumerate(fh, start=1) if f"# {marker}" in text)
    return f"{path}:{hit}"


def test_forward_nan_names_aten_log_and_the_line():
    f = fm.forward_nan(nan_trace="op").findings()
    assert len(f) == 1
    row = f.iloc[0]
    assert (row.layer, row.phase, row.op) == ("1", "forward", "aten::log")
    assert row.source == line_of("LOG_LINE")
    assert "aten::log" in row.message and row.source in row.message
    assert "clamp" in row.hint and "nan_trace" not in row.hint  # an op-specific fix, not "turn on tracing"


def test_backward_nan_names_the_sqrt_whose_gradient_failed():
    f = fm.backward_nan(nan_trace="op").findings()
    assert len(f) == 1
    row = f.iloc[0]
    assert (row.layer, row.phase, row.op) == ("1", "backward", "aten::sqrt")
    assert row.source == line_of("SQRT_LINE")
    assert "SqrtBackward0" in row.message and "masked" in row.message


def test_nan_in_the_loss_is_named_outside_the_model():
    f = fm.nan_in_loss(nan_trace="op").findings()
    assert len(f) == 1
    row = f.iloc[0]
    assert (row.layer, row.op) == ("", "aten::sqrt") and row.source == line_of("LOSS_LINE")


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x * 100)  # EXP_LINE


def test_tracer_events_inf_forward_and_nothing_in_eval():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Exp())
    names = [n for n, _ in model.named_modules()]
    tracer = NanTracer(model, names)
    try:
        with torch.no_grad():
            model(torch.randn(8, 4) * 10)  # evaluation forwards are not traced
        model.eval()
        model(torch.randn(8, 4) * 10)
        assert _get_current_dispatch_mode() is None and tracer.harvest() == []
        model.train()
        model(torch.randn(8, 4) * 10).sum().backward()
        events = tracer.harvest()
        assert events, "the overflow was not seen"
        e = events[0]
        assert (e.phase, e.op, e.layer, e.in_model) == ("forward", "aten::exp", "1", True)
        assert "+inf" in e.what
        assert e.source == f"{__file__}:{inspect.getsourcelines(Exp.forward)[1] + 1}"
        assert tracer.harvest() == []  # harvest empties
    finally:
        tracer.remove()
    assert _get_current_dispatch_mode() is None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_watched_training_with_op_tracing_is_bit_identical():
    def run(nan_trace):
        torch.manual_seed(0)
        model = fm.he_mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        gen = torch.Generator().manual_seed(1)
        batch = fm.classification()
        import gradsight as gs

        w = gs.watch(model, optimizer=opt, nan_trace=nan_trace) if nan_trace else None
        for _ in range(3):
            x, y = batch(gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        if w is not None:
            w.close()
        return [p.detach().clone() for p in model.parameters()]

    plain, traced = run(None), run("op")
    assert all(torch.equal(a, b) for a, b in zip(plain, traced, strict=True))
    assert _get_current_dispatch_mode() is None


def test_gradient_accumulation_keeps_the_backward_source():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), fm.SafeSqrt(), nn.Linear(16, 4))
    tracer = NanTracer(model, [n for n, _ in model.named_modules()])
    try:
        model(torch.ones(4, 8).abs() + 5).sum().backward()  # micro-batch 1: positive, finite
        model(torch.randn(4, 8)).sum().backward()  # micro-batch 2: NaN in the backward of sqrt
        events = [e for e in tracer.harvest() if e.phase == "backward"]
    finally:
        tracer.remove()
    assert events and (events[0].forward_op, events[0].layer) == ("aten::sqrt", "1")
    assert events[0].source.endswith(":" + line_of("SQRT_LINE").rsplit(":", 1)[1])


def test_the_capture_works_outside_the_tracers_mode(monkeypatch):
    """gradsight's own summaries step out of the tracer's dispatch mode (NanTracer.pause):
    none of their ops reaches the tracer (each would pay the mode's Python round trip), the
    mode is back in place after every hook, and a NaN is still traced to its op."""
    import gradsight as gs

    seen = []
    original = NanTracer._called_by_gradsight

    def counting(self, frame):
        own = original(self, frame)
        seen.append(own)
        return own

    monkeypatch.setattr(NanTracer, "_called_by_gradsight", counting)
    class MaybeLog(nn.Module):  # log of a Linear's output: NaN where it is negative, once switched on
        on = False

        def forward(self, x):
            return torch.log(x) if self.on else x

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1), MaybeLog())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt, nan_trace="op", histogram_every=2)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
    assert seen and not any(seen), "a gradsight op went through the tracer's mode"
    assert _get_current_dispatch_mode() is None  # the step closed: the mode is popped
    model[3].on = True
    opt.zero_grad()
    model(torch.randn(64, 8)).pow(2).mean().backward()
    opt.step()
    f = w.findings()
    assert (f.iloc[0].layer, f.iloc[0].phase, f.iloc[0].op) == ("3", "forward", "aten::log")
    w.close()
