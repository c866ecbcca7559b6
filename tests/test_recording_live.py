"""Recordings written by another process: followed live by readers, and killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gradsight as gs

pytest.importorskip("pyarrow")
ROOT = Path(__file__).resolve().parents[1]
FLUSH_STEPS = 5
CHILD = """
import sys, time, torch, gradsight as gs
from torch import nn
path, steps, pause, close = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "close"
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
w = gs.watch(model, optimizer=opt, histogram_every=3,
             record=gs.RecordTo(path, flush_steps=FLUSH_STEPS, flush_seconds=0.05))
for step in range(steps):
    loss = model(torch.randn(8, 8)).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step(); w.step(loss=loss)
    print(step, flush=True)
    time.sleep(pause)
if close:
    w.close()  # otherwise the end of the script closes the recording
print("done", flush=True)
""".replace("FLUSH_STEPS", str(FLUSH_STEPS))


class Writer:
    """A training script in another process, and the steps it says it finished."""

    def __init__(self, path: Path, steps: int, pause: float = 0.01, close: bool = True):
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(steps), str(pause),
                                      "close" if close else "exit"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.last = -1
        self.done = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 120
        while not (path / "manifest.json").exists():
            assert self.proc.poll() is None, self.proc.stderr.read()
            assert time.monotonic() < deadline, "the writer process never started recording"
            time.sleep(0.05)

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip() == "done":
                self.done = True
            elif line.strip().isdigit():
                self.last = int(line)


def check_consistent(rec) -> int:
    """What a follower sees is whole: steps 0..n-1, metrics for each, histograms and units only of
    stored steps. Returns the number of steps. (The reader looks once, then answers every query from
    that look; by default each query looks again at most every 0.2 s.)"""
    rec.refresh()
    rec.poll_seconds = float("inf")
    steps = rec.steps()["step"].to_numpy()
    np.testing.assert_array_equal(steps, np.arange(len(steps)))
    assert rec.history("grad_norm").index.equals(pd.Index(steps, name="step"))
    known = set(steps.tolist())
    for layer in rec.layer_names:
        for of in ("activation", "grad", "weight"):
            assert set(rec.histogram_steps(layer, of)) <= known
    assert set(rec.unit_history("1").index) <= known if len(steps) else True
    if len(steps):
        assert 0 <= rec.last_step <= steps[-1]  # layers() never runs ahead of the tables
    return len(steps)


def test_a_writer_killed_with_sigkill_loses_at_most_its_last_chunk(tmp_path):
    path = tmp_path / "run"
    writer = Writer(path, steps=100_000)
    rec = gs.open(path)
    seen = [0]
    deadline = time.monotonic() + 120
    while writer.last < 80:
        assert time.monotonic() < deadline and writer.proc.poll() is None
        n = check_consistent(rec)
        assert n >= seen[-1]
        seen.append(n)
        time.sleep(0.03)
    assert rec.live
    writer.proc.send_signal(signal.SIGKILL)
    writer.proc.wait(timeout=30)
    last = writer.last
    after = gs.open(path)
    assert not after.live and after.problems == []
    assert after.state == "ended early" and "ended early" in repr(after)  # not "recording": its writer is gone
    from gradsight.cli import summary

    assert "(ended early: a writer stopped without closing" in " ".join(summary(after, str(path))[0].split())
    n = check_consistent(after)
    assert n >= last + 1 - 4 * FLUSH_STEPS, (n, last)  # the last chunk (and the held-back step) at most
    assert len(set(seen)) > 3  # the follower saw the run grow
    rec.refresh()
    assert not rec.live
    pd.testing.assert_frame_equal(rec.steps(), after.steps())
    pd.testing.assert_frame_equal(rec.history("grad_norm"), after.history("grad_norm"))
    leftovers = [f.name for f in path.rglob(".tmp-*")]
    assert all(f.startswith(".tmp-") for f in leftovers)  # at most a dot-file that readers ignore


def test_two_readers_follow_one_writer(tmp_path):
    path = tmp_path / "run"
    writer = Writer(path, steps=60, close=False)  # the script just ends: the recording still closes
    a, b = gs.open(path), gs.open(path)
    deadline = time.monotonic() + 120
    counts = []
    while not writer.done:
        assert time.monotonic() < deadline, writer.proc.stderr.read()
        counts.append((check_consistent(a), check_consistent(b)))
        time.sleep(0.02)
    assert writer.proc.wait(timeout=30) == 0
    for rec in (a, b):
        rec.refresh()
        assert not rec.live
    fresh = gs.open(path)
    assert fresh.step_count == 60 and fresh.state == "closed" and a.state == "closed"
    for rec in (a, b):
        for q in ("steps", "layers", "findings"):
            pd.testing.assert_frame_equal(getattr(rec, q)(), getattr(fresh, q)())
        pd.testing.assert_frame_equal(rec.history("grad_norm"), fresh.history("grad_norm"))
        pd.testing.assert_frame_equal(rec.unit_history("1"), fresh.unit_history("1"))
        assert rec.histogram_steps("0", "grad") == fresh.histogram_steps("0", "grad")
    assert any(0 < x < 60 for x, _ in counts)  # they really read while it was written
