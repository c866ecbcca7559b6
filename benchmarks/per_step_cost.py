"""The fixed part of gradsight's per-step cost: a tiny model, where it dominates.

    python benchmarks/per_step_cost.py [--rounds 200]

A 32-64-64-10 MLP (batch 32) steps in tens of microseconds, so gradsight's fixed per-step
Python work (hooks per module, closing the step, one host transfer) shows as a large ratio.
Plain vs watched at every=1, 4, 16, A/B interleaved (order alternating), medians of the
per-round ratios. Writes benchmarks/results/per_step_cost.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gradsight as gs  # noqa: E402


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def step(model, opt, x, y):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(2)
    x, y = torch.randn(32, 32), torch.randint(0, 10, (32,))
    rows = []
    for every in (1, 4, 16):
        plain, plain_opt = make()
        watched, watched_opt = make()
        w = gs.watch(watched, optimizer=watched_opt, every=every)
        times = {"plain": [], "watched": []}
        for r in range(args.rounds + 20):
            order = [("plain", plain, plain_opt), ("watched", watched, watched_opt)]
            for name, m, o in order if r % 2 else order[::-1]:
                t = time.perf_counter()
                step(m, o, x, y)
                if r >= 20:
                    times[name].append(time.perf_counter() - t)
        w.close()
        ratios = [a / b for a, b in zip(times["watched"], times["plain"], strict=True)]
        rows.append((every, statistics.median(times["plain"]) * 1e6, statistics.median(times["watched"]) * 1e6,
                     statistics.median(ratios)))
    load = os.getloadavg()[0]
    lines = ["| every | plain step (us) | watched step (us) | median ratio |", "|---|---|---|---|"]
    lines += [f"| {e} | {p:.0f} | {wt:.0f} | {r:.2f}x |" for e, p, wt, r in rows]
    text = (f"32-64-64-10 MLP, batch 32, {args.rounds} rounds, torch.set_num_threads(2), "
            f"load average {load:.1f}\n\n" + "\n".join(lines) + "\n")
    print(text)
    out = Path(__file__).resolve().parent / "results" / "per_step_cost.md"
    out.write_text("# Fixed per-step cost (tiny model)\n\n" + text)


if __name__ == "__main__":
    main()
