"""The kernel end of the panel protocol, driven through a fake comm and a fake registry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradsight.comm import Hub, Session, schema
from gradsight.comm.limits import MAX_FINDINGS, MAX_PUSH_SHARE, PUSH_HIST_STEPS
from gradsight.comm.sources import KernelSources
from gradsight.comm.testing import FakeComm, FakeRegistry, FakeWatcher


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Events:
    """IPython's shell.events, reduced to what the hub uses."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list] = {"pre_run_cell": [], "post_run_cell": []}

    def register(self, name, cb):
        self.callbacks[name].append(cb)

    def unregister(self, name, cb):
        self.callbacks[name].remove(cb)

    def trigger(self, name):
        for cb in list(self.callbacks[name]):
            cb(None)


class Shell:
    def __init__(self) -> None:
        self.events = Events()


@pytest.fixture
def env():
    reg = FakeRegistry()
    reports: list = []
    clock = Clock()
    shell = Shell()
    hub = Hub(KernelSources(reg, lambda: reports), shell, clock=clock)
    return reg, hub, clock, shell, reports


def open_session(hub: Hub, **kw) -> tuple[FakeComm, Session]:
    comm = FakeComm()
    return comm, Session(comm, hub, **kw)


def req(kind: str, id: str = "r1", **fields):
    return {"v": 1, "kind": kind, "id": id, **fields}


def assert_all_valid(comm: FakeComm) -> None:
    """Everything the kernel sent is a schema-valid message whose buffer refs resolve."""
    for msg, buffers in comm.sent:
        schema.validate(msg)
        for ref in _refs(msg):
            comm.array(ref, buffers)


def _refs(obj):
    if isinstance(obj, dict):
        if set(obj) == {"buffer", "dtype", "shape"}:
            return [obj]
        return [r for v in obj.values() for r in _refs(v)]
    if isinstance(obj, list):
        return [r for v in obj for r in _refs(v)]
    return []


# -- requests -------------------------------------------------------------------------------


def test_hello_gets_status_with_watchers(env):
    reg, hub, *_ = env
    reg.watch(FakeWatcher("MLP"))
    reg.watch(FakeWatcher("MLP#2", layers=("a",)))
    comm, _ = open_session(hub)
    comm.deliver(req("hello", "h1", client={"name": "test", "version": "0"}))
    msg, _ = comm.last("status")
    assert msg["id"] == "h1"
    assert [w["name"] for w in msg["watchers"]] == ["MLP", "MLP#2"]
    assert msg["watchers"][1]["n_layers"] == 1
    assert msg["features"] == {"watchers": True, "gradcheck": True}
    assert_all_valid(comm)


def test_snapshot_carries_layer_columns_as_buffers(env):
    reg, hub, *_ = env
    w = reg.watch(FakeWatcher("MLP"))
    w.advance(3)
    comm, _ = open_session(hub)
    comm.deliver(req("get_snapshot", "s1", watcher=None))
    msg, buffers = comm.last("snapshot")
    assert msg["id"] == "s1" and msg["watcher"]["name"] == "MLP"
    assert msg["layers"]["names"] == ["fc1", "act", "fc2"]
    grad_norm = comm.array(msg["layers"]["columns"]["grad_norm"], buffers)
    np.testing.assert_allclose(grad_norm, w.layers()["grad_norm"].to_numpy())
    param_norm = comm.array(msg["layers"]["columns"]["param_norm"], buffers)
    assert math.isnan(param_norm[1]), "NaN (ReLU has no parameters) survives the trip"
    assert comm.array(msg["steps"]["columns"]["loss"], buffers).shape == (3,)
    assert msg["selected_layer"] == "fc1"
    assert_all_valid(comm)


def test_snapshot_findings_keep_the_watchers_order_and_the_most_severe(env):
    """The panel shows rows as sent, so they are w.findings()'s rows in its order (first step
    ascending); past the cap the most severe survive, still in that order."""
    reg, hub, *_ = env
    w = reg.watch(FakeWatcher("MLP"))
    w.advance(1)
    for i in range(MAX_FINDINGS + 50):
        w.add_finding(step=i, layer="fc1", kind="dead_units", severity="info", message=f"m{i}")
        if i == 3:
            w.add_finding(step=3, layer="fc2", kind="nan_origin", severity="error", message="NaN", op="aten::log",
                          source="train.py:12", value=float("nan"))  # fmt: skip
    comm, _ = open_session(hub)
    comm.deliver(req("get_snapshot", watcher="MLP"))
    msg, _ = comm.last("snapshot")
    rows = msg["findings"]["rows"]
    assert msg["findings"]["total"] == MAX_FINDINGS + 51 and len(rows) == MAX_FINDINGS
    assert [r["kind"] for r in rows[:6]] == ["dead_units"] * 4 + ["nan_origin", "dead_units"]
    assert rows[4]["source"] == "train.py:12" and rows[4]["value"] is None
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 3, *range(4, MAX_FINDINGS - 1)], "earliest kept, in order"
    assert msg["selected_layer"] == "fc2", "the first flagged layer is shown by default"
    assert_all_valid(comm)


def test_snapshot_findings_are_sent_in_the_watchers_order(env):
    reg, hub, *_ = env
    w = reg.watch(FakeWatcher("MLP"))
    w.advance(1)
    for step, sev in ((0, "info"), (1, "error"), (1, "warning"), (4, "info"), (7, "error")):
        w.add_finding(step=step, layer="fc1", kind="k", severity=sev, message="m")
    comm, _ = open_session(hub)
    comm.deliver(req("get_snapshot", watcher="MLP"))
    rows = comm.last("snapshot")[0]["findings"]["rows"]
    assert [(r["step"], r["severity"]) for r in rows] == [
        (0, "info"), (1, "error"), (1, "warning"), (4, "info"), (7, "error")
    ]


def test_get_layer_returns_histograms_over_steps(env):
    reg, hub, *_ = env
    w = reg.watch(FakeWatcher("MLP"))
    w.advance(5)
    comm, _ = open_session(hub)
    comm.deliver(req("get_layer", "l1", watcher="MLP", layer="fc1", max_steps=3))
    msg, buffers = comm.last("layer")
    assert msg["id"] == "l1" and msg["type"] == "Linear"
    grads = msg["histograms"]["grad"]
    assert [h["step"] for h in grads] == [2, 3, 4]
    h = w.histogram("fc1", of="grad", step=4)
    # the fake's histograms share their edges, so the common grid is theirs
    np.testing.assert_allclose(comm.array(grads[-1]["counts"], buffers), h.counts)
    np.testing.assert_allclose(comm.array(grads[-1]["edges"], buffers), h.edges)
    assert grads[-1]["zero"] == 1 and grads[-1]["nan"] == 0
    assert msg["stats"]["grad_norm"] == pytest.approx(6.0)
    assert math.isnan(w.layers()["param_norm"][1])
    comm.deliver(req("get_layer", "l2", watcher="MLP", layer="act"))
    msg, _ = comm.last("layer")
    assert msg["histograms"]["weight"] == [] and msg["stats"]["param_norm"] is None
    assert_all_valid(comm)


@pytest.mark.parametrize(
    "request_, code, reply_id",
    [
        (req("get_layer", watcher="MLP", layer="nope"), "not_found", "r1"),
        (req("get_snapshot", watcher="Nope"), "not_found", "r1"),
        (req("launch_missiles"), "unknown_kind", "r1"),
        ({"v": 9, "kind": "hello", "id": "r1"}, "unsupported_version", "r1"),
        ({"kind": "hello"}, "bad_message", None),
        ("hello", "bad_message", None),
        (None, "bad_message", None),
        (req("status", gradsight_version="x", protocol=1, watchers=[], features={}), "unknown_kind", "r1"),
    ],
)
def test_bad_requests_get_error_replies_and_a_log_line(env, request_, code, reply_id, caplog):
    reg, hub, *_ = env
    reg.watch(FakeWatcher("MLP")).advance(1)
    comm, _ = open_session(hub)
    import logging

    log = logging.getLogger("gradsight.comm")
    log.addHandler(caplog.handler)
    try:
        comm.deliver(request_)
    finally:
        log.removeHandler(caplog.handler)
    msg, _ = comm.last()
    assert msg["kind"] == "error" and msg["code"] == code
    assert msg["id"] == reply_id
    assert any(code in r.getMessage() for r in caplog.records)
    assert_all_valid(comm)


def test_request_with_buffers_is_refused(env):
    _, hub, *_ = env
    comm, _ = open_session(hub)
    comm.deliver(req("hello"), [memoryview(b"1234")])
    assert comm.last()[0]["code"] == "bad_message"


def test_a_watcher_that_raises_gets_internal_error_not_a_crash(env):
    reg, hub, *_ = env
    w = reg.watch(FakeWatcher("MLP"))

    def boom():
        raise RuntimeError("dictionary changed size during iteration")

    w.layers = boom
    comm, _ = open_session(hub)
    comm.deliver(req("get_snapshot", "s9", watcher="MLP"))
    msg, _ = comm.last()
    assert (msg["kind"], msg["code"], msg["id"]) == ("error", "internal", "s9")
    assert "dictionary changed size" in msg["message"]


# -- gradcheck ---------------------------------------------------------------------------------


class Report:
    def __init__(self, layer: str, passed: bool):
        import pandas as pd

        self.layer, self.passed, self.fn, self.mode, self.step = layer, passed, "Linear", "full", 3
        self._frame = pd.DataFrame(
            [{"name": "weight", "shape": (4, 2), "passed": passed, "max_abs_err": 0.5 if not passed else 1e-9,
              "max_rel_err": 0.1, "worst_index": (1, 0), "analytic": 1.0, "numeric": float("nan")}]
        )  # fmt: skip

    def to_frame(self):
        return self._frame

    def to_dict(self):
        return {"passed": self.passed, "fn": self.fn, "mode": self.mode}


def test_run_gradcheck_replies_with_new_report_first(env):
    reg, hub, _, _, reports = env
    w = reg.watch(FakeWatcher("MLP"))
    reports.append(Report("fc2", True))
    w.gradcheck_result = Report("fc1", False)
    comm, _ = open_session(hub)
    comm.deliver(req("run_gradcheck", "g1", watcher="MLP", layer="fc1", mode="fast"))
    msg, _ = comm.last("gradcheck_reports")
    assert w.gradcheck_calls == [("fc1", "fast")]
    assert msg["total"] == 2 and msg["reports"][0]["layer"] == "fc1" and not msg["reports"][0]["passed"]
    t = msg["reports"][0]["tensors"][0]
    assert t["shape"] == [4, 2] and t["worst_index"] == [1, 0] and t["numeric"] is None
    assert msg["reports"][0]["title"] == "fc1 (Linear)"
    comm.deliver(req("get_gradcheck_reports", "g2"))
    assert comm.last()[0]["reports"][0]["layer"] == "fc2"
    assert_all_valid(comm)


def test_run_gradcheck_is_refused_while_a_cell_runs(env):
    reg, hub, _, shell, _ = env
    w = reg.watch(FakeWatcher("MLP"))
    comm, _ = open_session(hub)
    shell.events.trigger("pre_run_cell")
    comm.deliver(req("run_gradcheck", watcher="MLP", layer="fc1"))
    assert comm.last()[0]["code"] == "busy" and w.gradcheck_calls == []
    shell.events.trigger("post_run_cell")
    comm.deliver(req("run_gradcheck", watcher="MLP", layer="fc1"))
    assert w.gradcheck_calls == [("fc1", "full")]


def test_gradcheck_unavailable_is_an_error_reply():
    reg = FakeRegistry()
    hub = Hub(KernelSources(reg, _raise_import_error), None)
    comm, _ = open_session(hub)
    comm.deliver(req("get_gradcheck_reports"))
    assert comm.last()[0]["code"] == "internal"  # the source raised: still an answer


def _raise_import_error():
    raise ImportError("no gradcheck")


# -- pushes ------------------------------------------------------------------------------------


def test_no_subscription_until_a_comm_opens_and_none_after_it_closes(env):
    reg, hub, *_ = env
    assert reg.subscribers == [] and not hub.subscribed
    comm, _ = open_session(hub)
    comm2, _ = open_session(hub)
    assert len(reg.subscribers) == 1 and hub.subscribed
    comm.close_from_frontend()
    assert len(reg.subscribers) == 1
    comm2.close_from_frontend()
    assert reg.subscribers == [] and not hub.subscribed
    assert all(not v for v in hub.shell.events.callbacks.values()), "cell hooks removed too"


def test_steps_push_snapshot_and_layer_throttled(env):
    reg, hub, clock, shell, _ = env
    w = reg.watch(FakeWatcher("MLP"))
    comm, _ = open_session(hub)
    shell.events.trigger("pre_run_cell")
    reg.step(w)  # first step: pushed at once
    assert comm.kinds() == ["snapshot", "layer"]
    snap = comm.last("snapshot")[0]
    assert snap["id"] is None and snap["watcher"]["step_count"] == 1
    for _ in range(50):  # 50 steps within 0.1 s: throttled
        clock.t += 0.002
        reg.step(w)
    assert comm.kinds() == ["snapshot", "layer"]
    clock.t += 0.25
    reg.step(w)
    assert comm.kinds().count("snapshot") == 2 and comm.last("snapshot")[0]["watcher"]["step_count"] == 52
    clock.t += 0.01
    reg.step(w)  # held back by the throttle ...
    assert comm.kinds().count("snapshot") == 2
    shell.events.trigger("post_run_cell")  # ... and sent when the cell ends
    assert comm.kinds().count("snapshot") == 3 and comm.last("snapshot")[0]["watcher"]["step_count"] == 53
    layer = comm.last("layer")[0]
    assert layer["layer"] == "fc1" and len(layer["histograms"]["grad"]) == PUSH_HIST_STEPS
    assert_all_valid(comm)


def test_push_interval_grows_with_the_cost_of_a_push(env):
    reg, hub, clock, *_ = env
    w = reg.watch(FakeWatcher("MLP"))
    comm, _ = open_session(hub)
    layers = w.layers

    def slow_layers():
        clock.t += 0.05  # a 50 ms push (a large model)
        return layers()

    w.layers = slow_layers
    reg.step(w)
    assert hub.interval >= 0.05 / MAX_PUSH_SHARE - 1e-9, "at most MAX_PUSH_SHARE of the wall time goes to pushes"
    assert MAX_PUSH_SHARE <= 0.02, "issue 16: the panel costs at most 2% of a training loop"
    n = comm.kinds().count("snapshot")
    clock.t += 0.5
    reg.step(w)
    assert comm.kinds().count("snapshot") == n, "0.5 s later is too soon after a 50 ms push"


def test_pushes_follow_the_selected_watcher_and_layer(env):
    reg, hub, clock, *_ = env
    a = reg.watch(FakeWatcher("A"))
    b = reg.watch(FakeWatcher("B"))
    comm, _ = open_session(hub)
    comm.deliver(req("get_layer", watcher="A", layer="fc2"))
    comm.sent.clear()
    clock.t += 1
    reg.step(b)
    assert comm.sent == [], "B is not followed"
    clock.t += 1
    reg.step(a)
    assert comm.last("snapshot")[0]["selected_layer"] == "fc2"
    assert comm.last("layer")[0]["layer"] == "fc2"


def test_watch_and_close_push_status(env):
    reg, hub, *_ = env
    comm, _ = open_session(hub)
    w = reg.watch(FakeWatcher("MLP"))
    assert comm.kinds()[0] == "status" and comm.last("status")[0]["watchers"][0]["name"] == "MLP"
    reg.close(w)
    assert comm.last()[0]["kind"] == "status" and comm.last()[0]["watchers"] == []


def test_push_failure_never_reaches_the_training_step(env):
    reg, hub, *_ = env
    w = reg.watch(FakeWatcher("MLP"))
    comm, _ = open_session(hub)

    def boom():
        raise RuntimeError("broken")

    w.layers = boom
    reg.step(w)  # would raise through w.step() if the hub let it
    comm.send = None  # even a broken comm object
    reg.step(w)


def test_requests_stay_on_the_subshell_the_panel_chose(env):
    """ipykernel 7 would route them to the main shell after a push from w.step()."""
    _, hub, *_ = env
    comm = FakeComm()
    comm._reply_subshell_for = lambda data, default: None  # ipykernel's: "the main shell"
    Session(comm, hub)
    assert comm._reply_subshell_for({"v": 1, "kind": "hello", "id": "a"}, "subshell-1") == "subshell-1"


def test_closed_session_sends_nothing(env):
    reg, hub, clock, *_ = env
    w = reg.watch(FakeWatcher("MLP"))
    comm, s = open_session(hub)
    s.close()
    assert comm.closed
    reg.step(w)
    assert comm.sent == []


def test_unanswered_kernel_opened_comm_is_closed_at_the_next_cell(env):
    reg, hub, _, shell, _ = env
    comm, s = open_session(hub, confirmed=False)
    shell.events.trigger("pre_run_cell")
    assert not comm.closed, "the cell that imported gradsight is still running"
    shell.events.trigger("post_run_cell")
    shell.events.trigger("pre_run_cell")
    assert comm.closed and not hub.subscribed


def test_answered_kernel_opened_comm_stays(env):
    _, hub, _, shell, _ = env
    comm, s = open_session(hub, confirmed=False)
    comm.deliver(req("hello"))
    shell.events.trigger("post_run_cell")
    shell.events.trigger("pre_run_cell")
    assert not comm.closed and hub.subscribed


# -- registration ------------------------------------------------------------------------------


class FakeCommManager:
    def __init__(self) -> None:
        self.targets: dict = {}

    def register_target(self, name, fn):
        self.targets[name] = fn


class FakeKernelShell(Shell):
    def __init__(self) -> None:
        super().__init__()
        self.kernel = type("K", (), {})()
        self.kernel.comm_manager = FakeCommManager()


@pytest.fixture
def fresh_comm_state(monkeypatch):
    import comm as comm_pkg

    import gradsight.comm as gc

    monkeypatch.setattr(
        gc, "_state", {"hub": Hub(KernelSources(FakeRegistry(), list), None), "manager": None}
    )
    opened: list[FakeComm] = []

    def create_comm(target_name, data=None, buffers=None, **_):
        c = FakeComm()
        c.target_name = target_name
        c.open_data = data
        opened.append(c)
        return c

    monkeypatch.setattr(comm_pkg, "create_comm", create_comm)
    return gc, opened


def test_register_is_idempotent_and_announces_once(fresh_comm_state):
    gc, opened = fresh_comm_state
    ip = FakeKernelShell()
    gc.register(ip)
    gc.register(ip)
    assert list(ip.kernel.comm_manager.targets) == ["gradsight"]
    assert len(opened) == 1 and opened[0].target_name == "gradsight"
    schema.validate(opened[0].open_data)
    assert opened[0].open_data["kind"] == "status"


def test_panel_opened_comm_answers_its_hello(fresh_comm_state):
    gc, _ = fresh_comm_state
    ip = FakeKernelShell()
    gc.register(ip)
    c = FakeComm()
    ip.kernel.comm_manager.targets["gradsight"](c, {"content": {"data": req("hello", "o1")}, "buffers": []})
    assert c.last()[0]["kind"] == "status" and c.last()[0]["id"] == "o1"


def test_register_outside_a_kernel_says_what_to_do(fresh_comm_state):
    gc, _ = fresh_comm_state
    with pytest.raises(RuntimeError, match="IPython kernel"):
        gc.register(object())


def test_register_if_ipython_is_a_silent_no_op_outside_a_kernel(fresh_comm_state):
    gc, opened = fresh_comm_state
    assert gc.register_if_ipython() is False
    assert opened == []


# -- the real watcher -------------------------------------------------------------------------


def test_real_watcher_through_the_protocol():
    torch = pytest.importorskip("torch")
    import gradsight as gs
    from gradsight import bus as registry

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hub = Hub(KernelSources(registry), None, min_interval=0.0, max_share=None)
    comm, session = open_session(hub)
    try:
        with gs.watch(model, optimizer=opt, histogram_every=1) as w:
            for _ in range(3):
                loss = model(torch.randn(8, 6)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            assert comm.kinds().count("snapshot") == 4, comm.kinds()  # watch (step 0) + 3 steps
            assert comm.last("snapshot")[0]["watcher"]["step_count"] == 3
            comm.deliver(req("get_layer", "x", watcher=w.name, layer="0"))
            msg, buffers = comm.last("layer")
            assert len(msg["histograms"]["grad"]) == 3 and len(msg["histograms"]["weight"]) == 3
            counts = comm.array(msg["histograms"]["grad"][-1]["counts"], buffers)  # on the common grid
            assert counts.sum() == pytest.approx(w.histogram("0", of="grad").counts.sum())
            assert_all_valid(comm)
    finally:
        session.close()
    assert not hub.subscribed


def test_log_lines_go_to_the_server_log_not_the_notebook(monkeypatch, tmp_path):
    """ipykernel forwards sys.stderr and fd 2 to the notebook; its copy of fd 2 is the log."""
    import os
    import sys

    from gradsight.comm import server_log as comm_log

    target = tmp_path / "server.log"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:

        class KernelStderr:
            _original_stdstream_copy = fd

        monkeypatch.setattr(sys, "stderr", KernelStderr())
        stream = comm_log._server_log_stream()
        stream.write("hello server log\n")
        stream.flush()
        assert target.read_text() == "hello server log\n"
        monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        assert comm_log._server_log_stream() is sys.__stderr__  # outside a kernel
    finally:
        os.close(fd)
