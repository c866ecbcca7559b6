"""Cost of the exact NaN mode: gs.watch(model, nan_trace="op") vs torch.autograd.detect_anomaly.

    python benchmarks/nan_trace.py [--steps 10] [--warmup 2] [--threads 2] [--models mlp,cnn,transformer]

Arms per model, A/B interleaved (the order reverses every round, so drift hits all arms
alike): plain training; ``torch.autograd.detect_anomaly()`` around the step; the
``NanTracer`` alone; ``gs.watch(model)`` (default, module-level NaN origin);
``gs.watch(model, nan_trace="op")``.
The table gives median step times and the median of per-round ratios to plain (with
IQR). torch.set_num_threads(2) (``--threads``). "NanTracer alone" is the exact mode
without the watcher's statistics: the like-for-like comparison with detect_anomaly;
``gs.watch(nan_trace="op")`` is what a user runs (the watcher plus the tracer). Models
are the issue-2 benchmark models, sized down so that the whole run stays under ~2
minutes on 2 cores. On a shared machine, read the IQRs: contention widens them.

A second table shows what each one *tells* on three planted faults (forward NaN,
backward NaN under torch.where, forward Inf overflow).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gradsight as gs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

MODELS = {"mlp": ("MLP 784-1024x3-10, batch 128", models.mlp),
          "cnn": ("CNN 3 conv (32/64/128) + BN + ReLU, 32x32, batch 32", lambda: models.cnn(batch=32)),
          "transformer": ("Transformer encoder 4 layers, d=256, 4 heads, seq 64, batch 8",
                          lambda: models.transformer(batch=8, seq=64))}
ARMS = ("plain", "detect_anomaly", "tracer", "watch", "nan_trace_op")
LABELS = {"detect_anomaly": "detect_anomaly", "tracer": "NanTracer alone", "watch": "gs.watch (default)",
          "nan_trace_op": 'gs.watch(nan_trace="op")'}


class _Closer:
    """Gives the standalone tracer the watcher's close() so all arms clean up alike."""

    def __init__(self, tracer):
        self.tracer = tracer

    def close(self):
        self.tracer.remove()


def make_step(model, x, y, arm):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    w = tracer = None
    if arm == "watch":
        w = gs.watch(model, optimizer=opt, name="bench-watch")
    elif arm == "nan_trace_op":
        w = gs.watch(model, optimizer=opt, nan_trace="op", name="bench-op")
    elif arm == "tracer":  # the exact mode's own cost, without the watcher's statistics
        from gradsight.kernel_hooks.nan_trace import NanTracer

        tracer = NanTracer(model, [n for n, _ in model.named_modules()])
        w = _Closer(tracer)
    anomaly = arm == "detect_anomaly"

    def step() -> float:
        t0 = time.perf_counter()
        ctx = torch.autograd.detect_anomaly() if anomaly else contextlib.nullcontext()
        with ctx:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        if tracer is not None:
            tracer.harvest()
        return time.perf_counter() - t0

    return step, w


def measure(key: str, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    base, x, y = MODELS[key][1]()
    arms = {a: make_step(copy.deepcopy(base), x, y, a) for a in ARMS}
    times = {a: [] for a in ARMS}
    for r in range(warmup + steps):
        for a in (ARMS if r % 2 == 0 else ARMS[::-1]):
            dt = arms[a][0]()
            if r >= warmup:
                times[a].append(dt)
    for _, w in arms.values():
        if w is not None:
            w.close()
    out = {"model": MODELS[key][0], "plain": statistics.median(times["plain"])}
    for a in ARMS[1:]:
        ratios = sorted(t / p for t, p in zip(times[a], times["plain"], strict=True))
        out[a] = (statistics.median(times[a]), statistics.median(ratios), ratios[len(ratios) // 4],
                  ratios[(3 * len(ratios)) // 4])
    return out


# --- what each one tells ------------------------------------------------------------------------

class LogOf(nn.Module):
    def forward(self, x):
        return torch.log(x)


class SafeSqrt(nn.Module):
    def forward(self, x):
        return torch.where(x > 0, torch.sqrt(x), torch.zeros_like(x))


class Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x * 100)


FAULTS = {"log of a negative (forward NaN)": LogOf, "sqrt inside torch.where (backward NaN)": SafeSqrt,
          "exp overflow (forward +Inf)": Exp}


def tells(fault) -> tuple[str, str]:
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), fault(), nn.Linear(16, 4))

    x, y = torch.randn(32, 8), torch.randn(32, 4)
    m = model()
    try:
        with torch.autograd.detect_anomaly(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nn.functional.mse_loss(m(x), y).backward()
        anomaly = "nothing (no error raised)"
    except RuntimeError as exc:
        anomaly = str(exc).splitlines()[0][:90]
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = gs.watch(m, optimizer=opt, nan_trace="op", name="bench-tells")
        opt.zero_grad()
        nn.functional.mse_loss(m(x), y).backward()
        opt.step()
    f = w.findings()
    w.close()
    if f.empty:
        return anomaly, "nothing"
    r = f.iloc[0]
    src = Path(r.source.rsplit(":", 1)[0]).name + ":" + r.source.rsplit(":", 1)[1] if r.source else "?"
    return anomaly, f"{r.kind} {r.phase}: layer '{r.layer}', {r.op} at {src}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--models", default="mlp,cnn,transformer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "nan_trace.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # detect_anomaly warns on every step
    t_start = time.perf_counter()
    rows = ["| model | plain (ms) | " + " | ".join(f"{LABELS[a]}: ms, ratio (IQR)" for a in ARMS[1:])
            + " | NanTracer / detect_anomaly |",
            "|---" * (len(ARMS) + 2) + "|"]
    for key in args.models.split(","):
        r = measure(key, args.steps, args.warmup)
        cells = [f"{r[a][0] * 1e3:.1f}, {r[a][1]:.2f}x ({r[a][2]:.2f}-{r[a][3]:.2f})" for a in ARMS[1:]]
        rows.append(f"| {r['model']} | {r['plain'] * 1e3:.1f} | " + " | ".join(cells)
                    + f" | {r['tracer'][1] / r['detect_anomaly'][1]:.2f} |")
        print(rows[-1], flush=True)
    told = ["| planted fault | detect_anomaly says | gs.watch(nan_trace=\"op\") finding |", "|---|---|---|"]
    for name, fault in FAULTS.items():
        a, g = tells(fault)
        told.append(f"| {name} | {a.replace('|', '/')} | {g} |")
    try:
        load = f"load average {os.getloadavg()[0]:.1f} at the end"
    except OSError:
        load = "load unknown"
    header = (f"Cost of exact NaN tracing per training step, {args.steps} A/B-interleaved rounds after "
              f"{args.warmup} warm-up, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} CPUs ({load}). Ratios are medians of per-round ratios to plain "
              "training.\n\n")
    text = header + "\n".join(rows) + "\n\nWhat each one reports:\n\n" + "\n".join(told) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print("\n" + text + f"\n(total {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
