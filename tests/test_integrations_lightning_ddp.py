"""The Lightning callback under a real ``Trainer(strategy="ddp", accelerator="cpu", devices=2)`` (gloo).

Lightning's own "ddp" launcher starts the other rank by running the same command line again, so
inside pytest it would re-run pytest. The job is a script, tests/lightning_ddp_job.py, started in two
processes at once with the torchrun variables (how torchrun and clusters launch Lightning DDP;
Lightning then launches nothing itself): both ranks import Lightning at the same time, and both fits
— a healthy one, then a NaN in rank 1's batch at step 3 — run in the same process group. Each rank
also builds the dashboard of its live watcher (the rank chooser).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import gradsight as gs

pytest.importorskip("pytorch_lightning")
pytest.importorskip("ipywidgets")
import torch.distributed as dist  # noqa: E402

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
JOB = Path(__file__).resolve().parent / "lightning_ddp_job.py"
NAN_STEP, STEPS = 3, 6  # as in lightning_ddp_job.py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("lightning_ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2", "NODE_RANK": "0",
           "PYTHONWARNINGS": "ignore"}
    env.pop("RANK", None)
    procs = [subprocess.Popen([sys.executable, str(JOB), str(out)], cwd=ROOT, env={**env, "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("the Lightning DDP job hung:\n" + "\n".join(p.communicate()[0][-2000:] for p in procs))
    for r, (proc, log) in enumerate(zip(procs, logs, strict=True)):
        assert proc.returncode == 0, f"rank {r} of the Lightning DDP job failed:\n{log[-3000:]}"
    results: dict = {}
    for scenario in ("healthy", "nan_rank1"):
        results[scenario] = [json.loads((out / scenario / f"rank{r}.json").read_text()) for r in range(2)]
        results[scenario + "_png"] = out / scenario / "ranks_tab.png"
    return results


def _serious(findings: list[dict]) -> list[dict]:
    return [f for f in findings if f["severity"] in ("error", "warning")]


def test_nan_on_rank_1_is_named_by_rank_nonfinite_on_both_ranks(jobs):
    for r, res in enumerate(jobs["nan_rank1"]):
        assert (res["rank"], res["world_size"]) == (r, 2)
        assert res["steps"] == list(range(STEPS)) and res["closed"]  # teardown removed the hooks
        origin = [f for f in res["findings"] if f["kind"] == "rank_nonfinite"]
        assert len(origin) == 1, res["findings"]
        assert (origin[0]["rank"], origin[0]["step"], origin[0]["layer"]) == (1, NAN_STEP, "net.0")
        assert "rank 1 produced the first non-finite value" in origin[0]["message"]
        table = {row["rank"]: row for row in res["ranks"]}
        assert set(table) == {0, 1} and table[1]["first_nonfinite_step"] == NAN_STEP
        assert table[1]["findings"] >= 1 and all(row["step_s"] > 0 for row in table.values())
    # rank 1's own detectors name its batch, at the step it came in
    local = [f for f in jobs["nan_rank1"][1]["findings"] if f["kind"] == "nan_origin"]
    assert local and local[0]["step"] == NAN_STEP and local[0]["rank"] == 1


def test_healthy_ddp_fit_is_silent(jobs):
    for res in jobs["healthy"]:
        assert res["steps"] == list(range(STEPS))
        assert _serious(res["findings"]) == [] and res["warnings"] == []
        assert [row["rank"] for row in res["ranks"]] == [0, 1]
        assert all(row["nonfinite_steps"] == 0 for row in res["ranks"])


def test_a_live_ddp_watchers_dashboard_has_the_rank_chooser(jobs):
    for r, res in enumerate(jobs["nan_rank1"]):
        dash = res["dashboard"]
        assert dash["titles"][-1] == "Ranks" and dash["png_bytes"] > 5000
        labels = {value: label for label, value in dash["rank_options"]}
        assert "went wrong first" in labels[1] and "went wrong first" not in labels[0]
        assert "this process" in labels[r] and dash["rank_value"] == 1
        assert "rank 1 went wrong first, step 3" in dash["note"]
        assert f"rank {r} of 2" in dash["header"]
    for res in jobs["healthy"]:
        assert "no rank has an error" in res["dashboard"]["note"]
    assert jobs["nan_rank1_png"].read_bytes()[:4] == b"\x89PNG"


def test_a_root_called_again_inside_its_own_forward_is_not_a_raised_forward():
    """What Lightning's DDP strategy does every step, in one process: DDP calls the LightningModule
    with its forward redirected to training_step, which calls self(x)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt)
    real = model.forward

    def training_step(x):
        model.forward = real
        return model(x).pow(2).mean()

    with warnings.catch_warnings():
        warnings.simplefilter("error", gs.GradsightWarning)
        for _ in range(3):
            opt.zero_grad()
            model.forward = training_step
            loss = model(torch.randn(8, 4))
            loss.backward()
            opt.step()
            w.step(loss)
    assert w.steps()["step"].tolist() == [0, 1, 2]
    assert w.history("grad_norm")["2"].notna().all()
    w.close()
