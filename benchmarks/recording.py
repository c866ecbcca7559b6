"""Recordings: bytes written per step, on-disk size of a long run, and the overhead of record=.

    python benchmarks/recording.py [--size-steps 100000] [--layers 50] [--steps 30] [--warmup 5]
                                   [--models mlp,cnn,transformer] [--skip-size] [--skip-overhead]

Size: a synthetic run (50 layers, bins=64, histograms every 10 steps, 25 ReLU layers of 256
units) written through the real writer, chunks of 100 steps, merges as in a live run; the
metrics are random-walk floats (incompressible mantissas, like real ones), detail metrics
NaN on light steps as the watcher records them.
Overhead: default gs.watch() vs gs.watch(record=tmpdir), A/B interleaved per round (order
alternating), medians of step times and of per-round ratios (IQR). The machine is shared:
the load average is recorded with the results.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gradsight as gs  # noqa: E402
from gradsight.records.histogram import HIST_KINDS, Histogram  # noqa: E402
from gradsight.records.metrics import DETAIL_METRICS, LAYER_METRICS  # noqa: E402
from gradsight.records.step_record import StepRecord  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402
import overhead  # noqa: E402


class Synthetic:
    """Step records and metrics shaped like a watcher's, cheap to make (no model runs)."""

    def __init__(self, layers: int = 50, bins: int = 64, histogram_every: int = 10, units: int = 256, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.L, self.bins, self.histogram_every, self.units = layers, bins, histogram_every, units
        self.names = [f"blocks.{i // 2}.{'fc' if i % 2 == 0 else 'act'}" for i in range(layers)]
        self.types = ["Linear" if i % 2 == 0 else "ReLU" for i in range(layers)]
        self.level = np.exp(self.rng.normal(0, 2, (len(LAYER_METRICS), layers)))
        half = bins // 2
        grid = 10.0 ** np.linspace(-6, 1, half + 1)
        self.edges = np.concatenate([-grid[::-1][:-1], [0.0], grid[1:]])
        self.counts = np.round(4000 * np.exp(-((np.arange(bins) - half + 0.5) / (bins / 6)) ** 2)).astype(np.int64)
        self.detail_rows = np.array([m in DETAIL_METRICS for m in LAYER_METRICS])

    def record(self, step: int) -> tuple[StepRecord, dict]:
        rng, L = self.rng, self.L
        detail = step % self.histogram_every == 0
        self.level *= np.exp(rng.normal(0, 0.02, self.level.shape))
        values = self.level.copy()
        if not detail:
            values[self.detail_rows] = np.nan
        metrics = {m: values[k] for k, m in enumerate(LAYER_METRICS)}
        P = L // 2
        rec = StepRecord(step=step, layers=tuple(self.names), act=np.zeros((L, 8)), act_numel=np.ones(L),
                         grad=np.zeros((L, 8)), grad_numel=np.ones(L), input_finite=np.ones(L),
                         saturation=np.full(L, np.nan), param_names=tuple(f"p{i}" for i in range(P)),
                         param_layer=np.arange(0, L, 2), param_sumsq=rng.random(P),
                         param_grad_sumsq=rng.random(P), param_update_sumsq=np.full(P, np.nan),
                         param_step_grad_sumsq=np.full(P, np.nan), param_seen=np.tile([True, True, False, False], (P, 1)),
                         loss=float(np.exp(-step / 5e4) + rng.random() * 0.01), lrs=(1e-3,), forward_s=0.01,
                         backward_s=0.02, detail=detail)
        rec.units = {i: rng.random(self.units).astype(np.float32) for i in range(1, L, 2)}
        if detail:
            scale = np.exp(rng.normal(0, 0.1, (L, len(HIST_KINDS))))
            for i in range(L):
                for k, of in enumerate(HIST_KINDS):
                    if of == "weight" and i % 2:
                        continue
                    rec.hist[(i, of)] = Histogram(layer=self.names[i], of=of, step=step, edges=self.edges * scale[i, k],
                                                  counts=rng.poisson(self.counts), zero=int(rng.integers(0, 50)),
                                                  nan=0, posinf=0, neginf=0)
        return rec, metrics


def write_synthetic(root: Path, steps: int, layers: int = 50, flush_steps: int = 100, capacity: int | None = None,
                    hist_capacity: int | None = None, on_flush=None):
    """Write a synthetic run of ``steps`` steps into ``root``; returns the writer (closed)."""
    from gradsight.recording.manifest import new_manifest
    from gradsight.recording.writer import RecordingWriter
    from gradsight.records.run_history import STEP_COLUMNS

    syn = Synthetic(layers)
    manifest = new_manifest(name="synthetic", layers=[{"name": n, "type": t, "params": 0}
                                                      for n, t in zip(syn.names, syn.types, strict=True)],
                            bins=syn.bins, every=1, histogram_every=syn.histogram_every, hist_kinds=HIST_KINDS,
                            layer_metrics=LAYER_METRICS, step_columns=STEP_COLUMNS, source="stream",
                            flush_steps=flush_steps, flush_seconds=1e9, units_window=100)
    root.mkdir(parents=True, exist_ok=True)
    writer = RecordingWriter(root, manifest, names=syn.names, hist_kinds=HIST_KINDS, bins=syn.bins,
                             flush_steps=flush_steps, thread=False, capacity=capacity, hist_capacity=hist_capacity)
    for s in range(steps):
        writer.add(*syn.record(s))
        if on_flush is not None and (s + 1) % flush_steps == 0:
            on_flush(s)
    writer.close()
    return writer


def disk_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def measure_size(steps: int, layers: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "run"
        peak = [0]
        t0 = time.perf_counter()
        writer = write_synthetic(root, steps, layers, on_flush=lambda s: peak.__setitem__(0, max(peak[0],
                                                                                                 disk_bytes(root))))
        elapsed = time.perf_counter() - t0
        size = disk_bytes(root)
        files = sum(1 for f in root.rglob("*.parquet"))
        rec = gs.open(root)
        stored = len(rec.steps())
        hist_steps = len(rec.histogram_steps(rec.layer_names[0], "grad"))
        import pandas as pd

        on_disk_steps = len(pd.read_parquet(root / "steps"))
        on_disk_hist = pd.read_parquet(root / "histograms", columns=["step"])["step"].nunique()
    return [
        f"Synthetic run: {steps:,} steps, {layers} layers, bins=64, histograms every 10 steps, chunks of 100 steps "
        f"(merge capacity {writer.capacity} steps, {writer.hist_capacity} histogram steps per level).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| bytes written per step (all writes incl. merges / steps) | {writer.bytes_written / steps:,.0f} |",
        f"| on-disk size at the end | {size / 2**20:.1f} MiB in {files} files |",
        f"| largest on-disk size during the run (sampled per chunk) | {max(peak[0], size) / 2**20:.1f} MiB |",
        f"| steps stored on disk / histogram steps stored | {on_disk_steps:,} / {on_disk_hist:,} |",
        f"| rows a Recording keeps in memory (steps / histogram steps) | {stored:,} / {hist_steps:,} |",
        f"| writer time (synthetic, single thread) | {elapsed:.1f} s ({elapsed / steps * 1e6:.0f} us per step) |",
    ]


def measure_overhead(key: str, steps: int, warmup: int, tmp: Path) -> dict:
    torch.manual_seed(0)
    base, x, y = getattr(models, key)()
    arms = {}
    for arm in ("watched", "recorded"):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        w = gs.watch(model, name=f"{key}-{arm}", record=(tmp / f"{key}-{arm}") if arm == "recorded" else None)
        arms[arm] = (model, opt, w)
    recorder = arms["recorded"][2]._recorder
    on_step, hook_time = recorder.on_step, []

    def timed_on_step(*args):
        t0 = time.perf_counter()
        on_step(*args)
        hook_time.append(time.perf_counter() - t0)

    recorder.on_step = timed_on_step
    times = {a: [] for a in arms}
    order = list(arms)
    for r in range(warmup + steps):
        for a in (order if r % 2 == 0 else order[::-1]):
            model, opt, w = arms[a]
            dt = overhead.train_step(model, opt, x, y, w)
            if r >= warmup:
                times[a].append(dt)
    for _, _, w in arms.values():
        w.close()
    ratios = sorted(t / p for t, p in zip(times["recorded"], times["watched"], strict=True))
    n = len(ratios)
    return {"watched": statistics.median(times["watched"]), "recorded": statistics.median(times["recorded"]),
            "ratio": statistics.median(ratios), "q1": ratios[n // 4], "q3": ratios[(3 * n) // 4],
            "bytes": disk_bytes(tmp / f"{key}-recorded") / (warmup + steps),
            "hook": statistics.mean(hook_time), "writer_cpu": recorder.writer.cpu_seconds / (warmup + steps)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-steps", type=int, default=100_000)
    ap.add_argument("--layers", type=int, default=50)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--models", default="mlp,cnn,transformer")
    ap.add_argument("--skip-size", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "recording.md"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = []
    if not args.skip_size:
        out += measure_size(args.size_steps, args.layers) + [""]
        print("\n".join(out), flush=True)
    if not args.skip_overhead:
        rows = ["| model | default watch (ms) | watch + record= (ms) | ratio (IQR) | training-thread cost per step "
                "| writer-thread CPU per step | bytes on disk per step |",
                "|---|---|---|---|---|---|---|"]
        with tempfile.TemporaryDirectory() as tmp:
            for key in args.models.split(","):
                r = measure_overhead(key, args.steps, args.warmup, Path(tmp))
                rows.append(f"| {key} | {r['watched'] * 1e3:.1f} | {r['recorded'] * 1e3:.1f} | {r['ratio']:.3f}x "
                            f"({r['q1']:.3f}-{r['q3']:.3f}) | {r['hook'] * 1e6:.0f} us ({r['hook'] / r['watched']:.2%}) "
                            f"| {r['writer_cpu'] * 1e3:.2f} ms ({r['writer_cpu'] / r['watched']:.1%}) | {r['bytes']:,.0f} |")
                print(rows[-1], flush=True)
        out += [f"Overhead of record= on the default watch, {args.steps} A/B-interleaved rounds after {args.warmup} "
                f"warm-up, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, {os.cpu_count()} cores, "
                f"load average {os.getloadavg()[0]:.1f} at the end (shared machine).", ""] + rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
