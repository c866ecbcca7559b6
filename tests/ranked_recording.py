"""A recording of a real torch.distributed job (gloo on CPU, world size 2) for the panel's tests.

Each rank trains the same small DDP model on its own data, rank 1's inputs 100x larger (so
its per-layer gradient norms differ from rank 0's by orders of magnitude: a panel showing rank
0's numbers under rank 1's label is caught) and, at ``nan_step``, holding a NaN. Every rank
records its shard with ``gs.watch(..., record=path)``: the job's top directory opens as one run
with a rank dimension.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

STEPS = 40
NAN_STEP = 25
RANK1_SCALE = 100.0


def _rank(rank: int, world: int, path: str, rendezvous: str, steps: int, nan_step: int | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        import gradsight as gs

        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(
            nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)))
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        w = gs.watch(model, optimizer=opt, name="ddp", record=path, on_nonfinite="skip")
        for step in range(steps):
            x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1000 * step + rank))
            if rank == 1:
                x = x * RANK1_SCALE
                if step == nan_step:
                    x[0, 0] = float("nan")
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        w.close()  # the recording is complete
    finally:
        dist.barrier()
        dist.destroy_process_group()


def write(path: Path, steps: int = STEPS, nan_step: int | None = NAN_STEP) -> Path:
    """Run the job (two processes, ~10 s on 2 cores) writing its recording to ``path``."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(2, str(path), os.path.join(tmp, "rendezvous"), steps, nan_step), nprocs=2, join=True)
    return Path(path)


if __name__ == "__main__":  # python tests/ranked_recording.py DIR
    import sys

    print(write(Path(sys.argv[1])))
