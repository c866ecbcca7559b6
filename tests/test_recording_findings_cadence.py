"""The findings table of a live recording is rebuilt (on the training thread) only when the
findings changed, and a finding that appears later still reaches the recording."""

import torch
from torch import nn

import gradsight as gs


def test_findings_are_rebuilt_only_when_they_change(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = gs.watch(model, optimizer=opt, record=gs.RecordTo(tmp_path / "run", flush_steps=2, flush_seconds=1e-6))
    built = []
    real = w.findings
    w.findings = lambda *a, **k: built.append(1) or real(*a, **k)
    def train(steps):
        for _ in range(steps):
            opt.zero_grad()
            model(torch.randn(4, 8)).pow(2).mean().backward()
            opt.step()

    train(8)  # a dead-unit suspicion comes and is dismissed in these first steps: a table for each change
    before = len(built)
    assert 1 <= before <= 3
    train(12)  # nothing changes: no table, though a snapshot is due every step
    assert len(built) == before
    x = torch.randn(4, 8)
    x[0, 0] = float("nan")
    opt.zero_grad()
    model(x).pow(2).mean().backward()  # a NaN from the batch: a new finding
    opt.step()
    assert len(built) == before + 1
    w.close()
    rec = gs.open(tmp_path / "run")
    kinds = set(rec.findings()["kind"])
    rec.close()
    assert kinds & {"nan_origin", "nonfinite"}, kinds
