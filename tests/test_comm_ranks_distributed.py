"""The panel's rank part from a real torch.distributed job (gloo on CPU, world 2): rank 1 gets a
NaN batch at step 7, and the snapshot each rank's kernel would send names rank 1, step 7 as the
rank that went wrong first, with the w.ranks() table and ranked findings, schema-valid. The
logic is tested fast on a fake in test_comm_compare.py; this checks it on the real Watcher API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _rank(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        import faulty_models as fm

        from gradsight.comm import payloads
        from gradsight.comm.schema import validate

        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
        steps = iter(range(10))

        def batch(_):  # each rank its own data; rank 1's step 7 holds a NaN
            step = next(steps)
            x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1000 * step + rank))
            if rank == 1 and step == 7:
                x[0, 0] = float("nan")
            return x, None

        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        run = fm.train(model, opt, batch, 10, lambda out, _: out.pow(2).mean(),
                       watch={"name": "ddp", "record": f"{tmp}/run"})
        run.watcher.close()  # the recording is complete
        msg, _ = payloads.snapshot(run.watcher)
        validate(msg)
        part = msg["ranks"]
        out = {"world_size": part["world_size"], "rank": part["rank"], "first_bad": part["first_bad"],
               "columns": sorted(part["columns"]), "finding_ranks": [f["rank"] for f in msg["findings"]["rows"]]}
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(out))
    finally:
        dist.barrier()
        dist.destroy_process_group()


@pytest.mark.slow  # a spawn of two processes (~25 s): make test-slow runs it
@pytest.mark.filterwarnings("ignore")
def test_every_rank_s_snapshot_and_the_job_s_recording_name_rank_1_step_7(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        out = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert (out["world_size"], out["rank"]) == (2, r)
        assert out["first_bad"]["rank"] == 1 and out["first_bad"]["step"] == 7, out
        assert {"rank", "step_s", "backward_s", "allreduce_s"} <= set(out["columns"])
        assert 1 in out["finding_ranks"], out
    # the recording every rank wrote, opened in a notebook's kernel and served as a panel source
    pytest.importorskip("pyarrow")
    import gradsight as gs
    from gradsight import bus
    from gradsight.comm import payloads
    from gradsight.comm.recording_source import recording_sources
    from gradsight.comm.schema import validate

    rec = gs.open(tmp_path / "run")
    try:
        source = next(s for s in recording_sources(bus) if s.recording is rec)
        msg, _ = payloads.snapshot(source)
        validate(msg)
        assert msg["ranks"]["world_size"] == 2
        assert msg["ranks"]["first_bad"]["rank"] == 1 and msg["ranks"]["first_bad"]["step"] == 7, msg["ranks"]
        assert 1 in [f["rank"] for f in msg["findings"]["rows"]]
    finally:
        rec.close()
