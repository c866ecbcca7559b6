"""Overhead of watching a training step: plain vs watched, A/B interleaved.

    python benchmarks/overhead.py [--steps 30] [--warmup 5] [--models mlp,cnn,transformer]

Each round runs one plain step and one watched step of the same model (the order
alternates every round, so drift hits both arms alike); the table reports the median
step time of each arm, the median of the per-round ratios and its spread (IQR).
Settings: torch.set_num_threads(2); arms: default gs.watch(), histograms and full
statistics every step (histogram_every=1), and capture every 4th step (every=4).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gradsight as gs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

MODELS = {"mlp": ("MLP 784-1024x3-10, batch 128", lambda: _one_input(models.mlp())),
          "cnn": ("CNN 3 conv (32/64/128) + BN + ReLU, 32x32, batch 64", lambda: _one_input(models.cnn())),
          "transformer": ("Transformer encoder 4 layers, d=256, 4 heads, seq 128, batch 16",
                          lambda: _one_input(models.transformer()))}


def _one_input(built):
    model, x, y = built
    return model, (x,), y


def make_step(model, inputs, target, watcher=None):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(*inputs), target)
        loss.backward()
        opt.step()
        if watcher is not None:
            watcher.step(loss)
        return time.perf_counter() - t0

    return step


def measure(key: str, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    base, inputs, target = MODELS[key][1]()
    arms = {}
    for arm in ("plain", "watched", "watched_hist1", "watched_every4"):
        model = copy.deepcopy(base)
        w = None
        if arm == "watched":
            w = gs.watch(model, name=f"{key}-default")
        elif arm == "watched_hist1":
            w = gs.watch(model, histogram_every=1, name=f"{key}-hist1")
        elif arm == "watched_every4":
            w = gs.watch(model, every=4, name=f"{key}-every4")
        arms[arm] = (make_step(model, inputs, target, w), w)
    times = {a: [] for a in arms}
    order = list(arms)
    for r in range(warmup + steps):
        seq = order if r % 2 == 0 else order[::-1]
        for a in seq:
            dt = arms[a][0]()
            if r >= warmup:
                times[a].append(dt)
    for _, w in arms.values():
        if w is not None:
            w.close()
    out = {"model": MODELS[key][0]}
    plain = times["plain"]
    for a in ("watched", "watched_hist1", "watched_every4"):
        ratios = sorted(t / p for t, p in zip(times[a], plain, strict=True))
        q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
        out[a] = (statistics.median(times[a]), statistics.median(ratios), q1, q3)
    out["plain"] = statistics.median(plain)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--models", default="mlp,cnn,transformer")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead.md"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = ["| model | plain step (ms) | default watch (ms) | ratio (IQR) | histogram_every=1 (ms) | ratio (IQR) "
            "| every=4 (ms) | ratio (IQR) |",
            "|---|---|---|---|---|---|---|---|"]
    for key in args.models.split(","):
        r = measure(key, args.steps, args.warmup)
        cells = [f"{r[a][0] * 1e3:.1f} | {r[a][1]:.3f}x ({r[a][2]:.3f}-{r[a][3]:.3f})"
                 for a in ("watched", "watched_hist1", "watched_every4")]
        rows.append(f"| {r['model']} | {r['plain'] * 1e3:.1f} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    load = os.getloadavg()[0]
    header = (f"Overhead of gs.watch(model) per training step, {args.steps} A/B-interleaved rounds after "
              f"{args.warmup} warm-up, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, "
              f"{os.cpu_count()} cores, load average {load:.1f} at the end.\n\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(header + table + "\n")
    print("\n" + header + table)


if __name__ == "__main__":
    main()
