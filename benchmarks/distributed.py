"""Cost of gradsight's cross-rank part on a watched DDP step (gloo, CPU), A/B interleaved.

    python benchmarks/distributed.py [--rounds 40] [--warmup 5] [--worlds 2,4]

Arms, in the same processes, on two copies of the same DDP model (MLP 784-1024x3-10, batch 128
per rank): A = ``gs.watch`` with the cross-rank part (timed communication hook + one packed
all_gather per step, checksums every 10 captured steps), B = ``gs.watch`` with the cross-rank part
off (DDP's built-in reduction, no collective of gradsight's). Each round runs one step of each arm,
the order alternating; rank 0 reports the median step of each arm, the median of per-round ratios
A/B with its IQR, and the mean time spent inside the exchange itself (pack, collective, judge), of
which in the collective (including waiting for the last rank to arrive: rank skew), and the
collective alone with the ranks arriving together (after a barrier; its own latency).
Bytes: the packet sent per rank and received per rank per step. ``torch.set_num_threads(1)`` per
process; the machine's load average is recorded because it is shared.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gradsight as gs  # noqa: E402
import gradsight.watcher as watcher_module  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "distributed.md"


def _watched(cross: bool):
    torch.manual_seed(0)
    model, x, y = models.mlp()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3, momentum=0.9)
    detect = watcher_module.detect
    if not cross:
        watcher_module.detect = lambda m: None  # the watcher then sees a single process
    try:
        w = gs.watch(ddp, optimizer=opt, name="A" if cross else "B")
    finally:
        watcher_module.detect = detect

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        return time.perf_counter() - t0

    return step, w


def _run(rank: int, world: int, tmp: str, rounds: int, warmup: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        a, wa = _watched(True)
        b, _ = _watched(False)
        for _ in range(warmup):
            a(), b()
        ta, tb = [], []
        before, before_g = wa._cross.exchange_s, wa._cross.gather_s
        for i in range(rounds):
            if i % 2:
                tb.append(b())
                ta.append(a())
            else:
                ta.append(a())
                tb.append(b())
        exchange = (wa._cross.exchange_s - before) / rounds
        gather = (wa._cross.gather_s - before_g) / rounds
        dist.barrier()  # the collective alone, ranks arriving together: its own latency, no skew
        t0 = time.perf_counter()
        for _ in range(rounds):
            wa._cross.packet.gather(np.zeros(wa._cross.packet.size))
        alone = (time.perf_counter() - t0) / rounds
        if rank == 0:
            with open(f"{tmp}/out.pkl", "wb") as f:
                pickle.dump({"a": ta, "b": tb, "exchange": exchange, "gather": gather, "alone": alone, "sent": wa._cross.packet.nbytes_sent,
                             "layers": len(wa.layer_names), "params": len(wa._cross.layout.param_names),
                             "ranks": wa.ranks()}, f)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def measure(world: int, rounds: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_run, args=(world, tmp, rounds, warmup), nprocs=world, join=True)
        with open(f"{tmp}/out.pkl", "rb") as f:
            return pickle.load(f)


def _q(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--worlds", default="2,4")
    args = ap.parse_args()
    load0 = os.getloadavg()
    rows = []
    for world in map(int, args.worlds.split(",")):
        r = measure(world, args.rounds, args.warmup)
        ratios = [a / b for a, b in zip(r["a"], r["b"], strict=True)]
        rows.append((world, statistics.median(r["b"]), statistics.median(r["a"]), statistics.median(ratios),
                     _q(ratios, 0.25), _q(ratios, 0.75), r["exchange"], r["gather"], r["alone"], r["sent"],
                     r["sent"] * world,
                     r["layers"], r["params"]))
        print(rows[-1], flush=True)
    load1 = os.getloadavg()
    lines = [
        "# Cross-rank cost on a watched DDP step (gloo, CPU)", "",
        f"`python benchmarks/distributed.py --rounds {args.rounds} --warmup {args.warmup} --worlds {args.worlds}`; "
        f"MLP 784-1024x3-10, batch 128 per rank, 1 thread per process, {os.cpu_count()} cores. "
        f"Load average (1 min) {load0[0]:.1f} before, {load1[0]:.1f} after: the machine is shared with other "
        "jobs, so ratios carry that noise (the world-4 run also puts 4 processes on these cores).", "",
        "| world | B: watched, cross-rank off (ms) | A: with cross-rank (ms) | A/B median | IQR | exchange "
        "(ms/step) | of which in the collective | collective alone | bytes sent/rank/step | "
        "bytes received/rank/step | layers | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for w, b, a, ratio, q1, q3, ex, ga, alone, sent, recv, L, P in rows:
        lines.append(f"| {w} | {b * 1e3:.2f} | {a * 1e3:.2f} | {ratio:.3f} | {q1:.3f}-{q3:.3f} | {ex * 1e3:.3f} | "
                     f"{ga * 1e3:.3f} | {alone * 1e3:.3f} | {sent:,} | {recv:,} | {L} | {P} |")
    from gradsight.distributed.packet import H

    lines += ["", f"The packet is `8 x ({H} + 2 x layers + 4 x sharded params + 2 x replicated params)` bytes per "
              "rank (gradsight/distributed/packet.py): it depends on the number of layers and parameter tensors, "
              "never on the number of parameter values; each rank receives `world x` that from one all_gather."]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
