"""Recordings as panel sources: listed in status, served by the same payload code as watchers,
opened by path on the panel's request (checked to lie under the server's root), and pushed while
another process writes them."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight import bus
from gradsight.comm import payloads, recording_source
from gradsight.comm.session import Session
from gradsight.comm.sources import KernelSources
from gradsight.comm.testing import CheckedComm, unthrottled_hub


@pytest.fixture(autouse=True)
def _only_this_tests_sources():
    """These tests list the kernel's sources: close what earlier tests left alive (a recording or
    watcher still referenced, e.g. from a traceback), so that the order of test files does not matter."""
    gc.collect()
    for w in bus.active_watchers():
        w.close()
    for rec in bus.open_recordings():
        rec.close()
    yield

pytest.importorskip("pyarrow")
ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, time, torch, gradsight as gs
from torch import nn
path, steps, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
w = gs.watch(model, optimizer=opt, name="script", histogram_every=2,
             record=gs.RecordTo(path, flush_steps=1, flush_seconds=0.05))
for step in range(steps):
    loss = model(torch.randn(8, 8)).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step(); w.step(loss=loss)
    time.sleep(pause)
w.close()
"""


def _train(path: Path, steps: int = 12, name: str = "MLP") -> gs.Watcher:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, name=name, histogram_every=2, record=path)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = model(torch.randn(8, 8, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step(loss=loss)
    return w


@pytest.fixture
def hub():
    with unthrottled_hub(KernelSources(bus, list)) as h:
        yield h
    for rec in bus.open_recordings():
        rec.close()


def _session(hub) -> tuple[CheckedComm, Session]:
    comm = CheckedComm()
    return comm, Session(comm, hub)


def _request(comm: CheckedComm, kind: str, **fields) -> dict:
    comm.deliver({"v": 1, "kind": kind, "id": f"t:{len(comm.sent)}", **fields})
    return comm.last()[0]


def test_an_opened_recording_is_a_source_served_by_the_watchers_payload_code(hub, tmp_path):
    w = _train(tmp_path / "exp1")
    w.close()  # the recording is complete; a model of the same name is watched in the kernel
    other = gs.watch(nn.Linear(2, 2), name="MLP")
    comm, _ = _session(hub)
    rec = gs.open(tmp_path / "exp1")
    status = comm.last("status")[0]  # pushed on open
    entry = next(x for x in status["watchers"] if x.get("source") == "recording")
    assert entry == {"name": "MLP [exp1]", "step_count": 12, "n_layers": len(rec.layers()),
                     "source": "recording", "live": False}
    assert [x["name"] for x in status["watchers"]] == ["MLP", "MLP [exp1]"]  # the live watcher keeps its name

    snap = _request(comm, "get_snapshot", watcher="MLP [exp1]")
    buffers = comm.last()[1]
    expected, ebuf = payloads.snapshot(w)  # the watcher that wrote it, through the same code
    assert snap["kind"] == "snapshot" and snap["watcher"]["name"] == "MLP [exp1]"
    assert snap["watcher"]["step_count"] == 12 and snap["layers"]["names"] == expected["layers"]["names"]
    assert snap["findings"] == expected["findings"]
    for col, ref in expected["steps"]["columns"].items():
        np.testing.assert_array_equal(comm.array(snap["steps"]["columns"][col], buffers), comm.array(ref, ebuf))
    layer = _request(comm, "get_layer", watcher="MLP [exp1]", layer=snap["selected_layer"])
    assert layer["kind"] == "layer" and len(layer["histograms"]["grad"]) > 0

    # a gradcheck needs a model: a clear refusal, not an internal error
    err = _request(comm, "run_gradcheck", watcher="MLP [exp1]", layer=snap["selected_layer"])
    assert err["kind"] == "error" and err["code"] == "unavailable" and "recording" in err["message"]

    rec.close()  # dropped from the panel's list
    assert [x["name"] for x in comm.last("status")[0]["watchers"]] == ["MLP"]
    other.close()


def test_two_recordings_of_the_same_directory_name_get_distinct_names(hub, tmp_path):
    _train(tmp_path / "a" / "run").close()
    _train(tmp_path / "b" / "run").close()
    a = gs.open(tmp_path / "a" / "run")
    b = gs.open(tmp_path / "b" / "run")
    names = [s.name for s in KernelSources(bus).watchers()]
    assert names == ["MLP [run]", "MLP [run]#2"]
    del a, b  # a recording nobody holds any more leaves the panel's list
    import gc

    gc.collect()
    assert KernelSources(bus).watchers() == []


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A server root holding a recording and a notebook folder the kernel runs in."""
    root = tmp_path / "root"
    (root / "nbs").mkdir(parents=True)
    _train(root / "runs" / "exp1").close()
    (root / "runs" / "empty").mkdir()
    monkeypatch.chdir(root / "nbs")
    return root


def test_open_recording_by_server_relative_path(hub, server):
    comm, session = _session(hub)
    snap = _request(comm, "open_recording", path="runs/exp1/manifest.json", notebook="nbs/train.ipynb")
    assert snap["kind"] == "snapshot" and snap["watcher"] == {"name": "MLP [exp1]", "step_count": 12,
                                                              "n_layers": snap["layers"]["total"]}
    assert [r.root for r in bus.open_recordings()] == [server / "runs" / "exp1"]
    again = _request(comm, "open_recording", path="runs/exp1", notebook="nbs/train.ipynb")
    assert again["watcher"]["name"] == "MLP [exp1]" and len(bus.open_recordings()) == 1  # the same one
    hello = _request(comm, "hello")
    assert hello["watchers"][-1]["source"] == "recording"


@pytest.mark.parametrize(("path", "notebook", "code", "words"), [
    ("/etc", "nbs/train.ipynb", "bad_message", "relative to the Jupyter server's root"),
    ("../outside", "nbs/train.ipynb", "bad_message", "without '..'"),
    ("escape", "nbs/train.ipynb", "bad_message", "outside the server's root"),
    ("runs/nothing", "nbs/train.ipynb", "not_found", "does not exist"),
    ("runs/empty", "nbs/train.ipynb", "not_found", "not a gradsight recording"),
    ("nbs", "nbs/train.ipynb", "not_found", "not a gradsight recording"),
    ("runs/exp1", "elsewhere/train.ipynb", "unavailable", "gs.open(path)"),
])
def test_open_recording_refuses_paths_outside_the_root_and_non_recordings(hub, server, path, notebook, code, words):
    (server / "escape").symlink_to(server.parent)
    comm, _ = _session(hub)
    err = _request(comm, "open_recording", path=path, notebook=notebook)
    assert err["kind"] == "error" and err["code"] == code and err["request_kind"] == "open_recording"
    assert words in err["message"], err["message"]
    assert bus.open_recordings() == []


def test_server_root_from_the_kernel_directory(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert recording_source.server_root("a/b/x.ipynb", str(tmp_path / "a" / "b")) == tmp_path.resolve()
    assert recording_source.server_root("x.ipynb", str(tmp_path)) == tmp_path.resolve()


def _wait(cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_live_recording_is_pushed_while_written_and_polling_stops_when_it_ends(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    path = tmp_path / "live"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "30", "0.1"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: (path / "manifest.json").exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read()
        comm, session = _session(hub)
        first = _request(comm, "open_recording", path="live", notebook="train.ipynb")
        assert first["kind"] == "snapshot", first
        poller = recording_source._pollers[session]
        assert poller.thread.is_alive()

        def pushed_steps():
            return [m["watcher"]["step_count"] for m, _ in comm.sent if m["kind"] == "snapshot" and m["id"] is None]

        _wait(lambda: len(set(pushed_steps())) >= 3)  # pushes without any request, while the script trains
        steps = pushed_steps()
        assert steps == sorted(steps) and steps[-1] > first["watcher"]["step_count"]
        assert any(m["kind"] == "layer" and m["id"] is None for m, _ in comm.sent)
        assert proc.wait(timeout=60) == 0
        poller.thread.join(timeout=30)
        assert not poller.thread.is_alive()  # the writer finished: the poller made its last push and stopped
        assert pushed_steps()[-1] == 30
        assert comm.last("snapshot")[0]["watcher"]["step_count"] == 30
    finally:
        proc.kill()
        proc.wait()


def test_polling_stops_when_the_panel_closes_follows_a_watcher_or_the_recording_is_closed(hub, tmp_path,
                                                                                           monkeypatch):
    _train(tmp_path / "run").close()
    rec = gs.open(tmp_path / "run")
    # the writer finished; pretend it goes on, so that only the panel's side can stop the poller
    monkeypatch.setattr(type(rec), "live", property(lambda self: not self.detached))
    src = recording_source.recording_sources(bus)[0]
    comm, session = _session(hub)
    p1 = recording_source.keep_fresh(session, src)
    assert p1 is not None and p1.thread.is_alive()
    assert recording_source.keep_fresh(session, src) is p1  # asking again keeps the one poller
    assert recording_source.keep_fresh(session, object()) is None  # the panel picked a watcher
    p1.thread.join(timeout=5)
    assert not p1.thread.is_alive()

    p2 = recording_source.keep_fresh(session, src)
    assert p2.thread.is_alive()
    comm.close_from_frontend()  # the panel closed
    p2.thread.join(timeout=5)
    assert not p2.thread.is_alive()

    comm, session = _session(hub)
    p3 = recording_source.keep_fresh(session, src)
    assert p3.thread.is_alive()
    rec.close()
    p3.thread.join(timeout=5)
    assert not p3.thread.is_alive()
