"""Overhead of watching a training step, with the floor and the peers in the same run.

    python benchmarks/overhead.py [--steps 30] [--warmup 5] [--models mlp,cnn,transformer]
                                  [--arms floor,naive,anomaly,default,hist1,nan_trace,record]
                                  [--no-panel] [--no-memory] [--threads 2]

Every arm trains its own deep copy of the same model on the same batch. Each round runs
one step of every arm; the order reverses every round, so drift and contention hit all
arms alike. Reported: the median step time of each arm and the median (and IQR) of the
per-round ratios to the plain step of the same round. Arms:

- ``floor``: a no-op forward hook and a no-op tensor hook on the output of every module
  (the hooks gradsight places, doing nothing): what any hook-based tool pays.
- ``naive``: mean/std/norm of every output and output gradient kept as tensors, one
  transfer to the host per step (what a hand-written stats hook does).
- ``anomaly``: ``torch.autograd.detect_anomaly()`` around forward and backward.
- ``default``: ``gs.watch(model)``; ``hist1``: ``gs.watch(model, histogram_every=1)``
  (every statistic and histogram every step); ``nan_trace``: ``gs.watch(model,
  nan_trace="op")``; ``record``: ``gs.watch(model, record=<tmpdir>)``.

The panel runs in a second phase (the comm hub is process-wide, so a panel attached in the
first phase would also follow the other watchers): plain vs default vs default with a
panel session attached and receiving pushes; "panel on top" is the ratio of the last two.
Peak memory: fresh processes run the same steps per arm and report their peak RSS (VmHWM);
the table gives the median of three, watched vs plain.
Writes benchmarks/results/overhead.md (with the machine load at the start and the end).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gradsight as gs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402

MODELS = {"mlp": ("MLP 784-1024x3-10, batch 128", models.mlp),
          "cnn": ("CNN 3 conv (32/64/128) + BN + ReLU, 32x32, batch 64", models.cnn),
          "transformer": ("Transformer encoder 4 layers, d=256, 4 heads, seq 128, batch 16", models.transformer),
          "gpt2": ("GPT-2 small (transformers, 124M parameters), seq 256, batch 8", models.gpt2)}
DEVICE = torch.device("cpu")  # --device; every arm's model and batch live there
GROUP = 1
"""Steps timed together: on a GPU, 5 steps and then one wait for the device, so that a tool's
own waits (which stop the host from queueing ahead) show in its time, as in a real loop."""
ARMS = ("floor", "naive", "anomaly", "default", "hist1", "nan_trace", "record")
LABELS = {"floor": "no-op forward + tensor hooks on every module (the floor)",
          "naive": "naive mean/std/norm of every output and output-gradient, one transfer per step",
          "anomaly": "`torch.autograd.detect_anomaly()`",
          "default": "`gs.watch(model)`",
          "hist1": "`gs.watch(model, histogram_every=1)`",
          "nan_trace": '`gs.watch(model, nan_trace="op")`',
          "record": "`gs.watch(model, record=dir)`",
          "panel": "`gs.watch(model)` + JupyterLab panel receiving pushes"}


class HookTool:
    """The floor and the naive peer: forward hooks + tensor hooks on outputs of every module."""

    def __init__(self, model: nn.Module, naive: bool):
        self.naive = naive
        self.stats: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._forward) for m in model.modules()]

    def _summary(self, t: torch.Tensor) -> None:
        if self.naive:
            t = t.detach().float()
            self.stats.append(torch.stack([t.mean(), t.std(), torch.linalg.vector_norm(t)]))

    def _forward(self, module, args, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            self._summary(output)
            if output.requires_grad:
                output.register_hook(self._grad)

    def _grad(self, g):
        self._summary(g)

    def step(self, loss=None) -> None:
        if self.stats:
            torch.stack(self.stats).cpu()  # one transfer per step
            self.stats = []

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def train_step(model: nn.Module, opt, x, y, tool=None, anomaly: bool = False) -> float:
    """One timed training step, as every benchmark arm runs it: forward, cross-entropy,
    backward, optimizer step, then ``tool.step(loss)`` (a watcher or a hook tool) inside the
    timing. Seconds."""
    t0 = time.perf_counter()
    with torch.autograd.detect_anomaly() if anomaly else contextlib.nullcontext():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
    opt.step()
    if tool is not None:
        tool.step(loss)
    return time.perf_counter() - t0


def make_arm(arm: str, model: nn.Module, x, y, tmp: str):
    """A closure running one timed training step of ``arm`` and the object to close."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    tool = watcher = None
    if arm in ("floor", "naive"):
        tool = HookTool(model, naive=arm == "naive")
    elif arm in ("default", "panel"):
        watcher = gs.watch(model, name=f"bench-{arm}")
    elif arm == "hist1":
        watcher = gs.watch(model, histogram_every=1, name="bench-hist1")
    elif arm == "nan_trace":
        watcher = gs.watch(model, nan_trace="op", name="bench-nan-trace")
    elif arm == "record":
        watcher = gs.watch(model, record=os.path.join(tmp, "run"), name="bench-record")
    anomaly = arm == "anomaly"

    def step() -> float:
        return train_step(model, opt, x, y, watcher or tool, anomaly=anomaly)

    return step, (watcher or tool)


def interleave(key: str, arms: list[str], steps: int, warmup: int, between=None,
               after_build=None) -> dict[str, list[float]]:
    torch.manual_seed(0)
    base, x, y = MODELS[key][1]()
    base, x, y = base.to(DEVICE), x.to(DEVICE), y.to(DEVICE)
    names = ["plain", *arms]
    with tempfile.TemporaryDirectory() as tmp:
        built = {a: make_arm(a, copy.deepcopy(base), x, y, tmp) for a in names}
        if after_build is not None:
            after_build()
        times: dict[str, list[float]] = {a: [] for a in names}
        for r in range(warmup + steps):
            for a in (names if r % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                for _ in range(GROUP):
                    built[a][0]()
                if DEVICE.type == "cuda":
                    torch.cuda.synchronize(DEVICE)
                dt = (time.perf_counter() - t0) / GROUP
                if between is not None:
                    between()
                if r >= warmup:
                    times[a].append(dt)
        for _, closer in built.values():
            if closer is not None:
                closer.close()
    return times


def ratios(arm: list[float], plain: list[float]) -> tuple[float, float, float, float]:
    """(median step, median ratio, q1, q3) of per-round ratios."""
    r = sorted(a / p for a, p in zip(arm, plain, strict=True))
    return statistics.median(arm), statistics.median(r), r[len(r) // 4], r[(3 * len(r)) // 4]


def panel_phase(key: str, steps: int, warmup: int) -> dict[str, list[float]]:
    """plain vs default vs default+panel: one panel session attached to the process hub,
    following the panel arm's watcher (the default arm's steps reach the hub too, as any
    watcher's do while a panel is open, and are not pushed)."""
    from gradsight import comm as gcomm
    from gradsight.comm.session import Session
    from gradsight.comm.testing import FakeComm

    fake = FakeComm()
    Session(fake, gcomm.hub())
    fake.deliver({"v": 1, "kind": "hello", "id": "bench"})

    def follow() -> None:
        fake.deliver({"v": 1, "kind": "get_snapshot", "id": "follow", "watcher": "bench-panel"})
        assert fake.last("snapshot")[0]["watcher"]["name"] == "bench-panel", "the panel follows the panel arm"

    times = interleave(key, ["default", "panel"], steps, warmup, between=fake.sent.clear, after_build=follow)
    fake.close_from_frontend()
    return times


def peak_rss(key: str, arm: str, steps: int) -> float:
    """Peak RSS (MiB) of a fresh process training ``arm`` for ``steps`` steps: VmHWM, the
    high-water mark of this process's own memory (``ru_maxrss`` keeps the parent's across exec)."""
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import overhead as o, re, torch, tempfile; torch.set_num_threads(1); torch.manual_seed(0); "
            f"m, x, y = o.MODELS[{key!r}][1](); t = tempfile.mkdtemp(); "
            f"s, c = o.make_arm({arm!r}, m, x, y, t)\n"
            f"for _ in range({steps}): s()\n"
            f"print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def _device_name() -> str:
    return torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else "CPU"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--models", default="mlp,cnn,transformer")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-panel", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (peak memory: RSS on CPU only)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead.md"))
    args = ap.parse_args()
    global DEVICE, GROUP
    DEVICE = torch.device(args.device)
    GROUP = 5 if DEVICE.type == "cuda" else 1
    torch.set_num_threads(args.threads)
    keys = args.models.split(",")
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise SystemExit(f"unknown arms {sorted(unknown)}; choose from {list(ARMS)}")
    load0, started = os.getloadavg()[0], time.perf_counter()
    results: dict[str, dict] = {}
    for key in keys:
        t = interleave(key, arms, args.steps, args.warmup)
        results[key] = {"plain": statistics.median(t["plain"]), **{a: ratios(t[a], t["plain"]) for a in arms}}
        if "default" in arms:  # what a run pays on average: its histogram steps (1 in 10) included
            results[key]["default_mean"] = statistics.fmean(t["default"]) / statistics.fmean(t["plain"])
        if not args.no_panel:
            p = panel_phase(key, args.steps, args.warmup)
            results[key]["panel_default"] = (ratios(p["default"], p["plain"]), ratios(p["panel"], p["plain"]))
        print(key, json.dumps(results[key]), flush=True)
    memory: dict[str, dict] = {}
    if not args.no_memory and DEVICE.type == "cpu":
        for key in keys:
            n = 12 if key != "transformer" else 6
            # the median of three fresh processes: one process's RSS moves by +-20 MB run to run
            memory[key] = {a: statistics.median(peak_rss(key, a, n) for _ in range(3))
                           for a in ("plain", "default", "hist1")}
            print(key, "peak RSS MiB", memory[key], flush=True)
    load1 = os.getloadavg()[0]

    head = "| instrumentation | " + " | ".join(MODELS[k][0].split(",")[0] for k in keys) + " |"
    lines = [head, "|---|" + "---:|" * len(keys)]
    lines.append("| plain step (ms) | " + " | ".join(f"{results[k]['plain'] * 1e3:.1f}" for k in keys) + " |")

    def cell(v):
        return f"{v[1]:.2f}x ({v[2]:.2f}-{v[3]:.2f})"

    for a in arms:
        lines.append(f"| {LABELS[a]} | " + " | ".join(cell(results[k][a]) for k in keys) + " |")
        if a == "default":
            lines.append("| `gs.watch(model)`, mean step over the rounds (its histogram steps, 1 in 10, "
                         "included; ratio of means) | " + " | ".join(f"{results[k]['default_mean']:.2f}x"
                                                                     for k in keys) + " |")
    if not args.no_panel:
        lines.append(f"| {LABELS['panel']} | " + " | ".join(cell(results[k]["panel_default"][1]) for k in keys) + " |")
        lines.append("| panel on top of the default (ratio of medians) | " + " | ".join(
            f"{results[k]['panel_default'][1][1] / results[k]['panel_default'][0][1]:.3f}x" for k in keys) + " |")
    if "record" in arms and "default" in arms:
        lines.append("| `record=` on top of the default (ratio of medians) | " + " | ".join(
            f"{results[k]['record'][1] / results[k]['default'][1]:.3f}x" for k in keys) + " |")
    if memory:
        for a in ("default", "hist1"):
            lines.append(f"| peak RSS, {LABELS[a]} vs plain (median of 3 processes) | " + " | ".join(
                f"{memory[k][a]:.0f} / {memory[k]['plain']:.0f} MiB ({100 * (memory[k][a] / memory[k]['plain'] - 1):+.1f}%)"
                for k in keys) + " |")
    table = "\n".join(lines)
    header = (f"Overhead per training step: median of per-round ratios to the plain step of the same round "
              f"(IQR in brackets), {args.steps} A/B-interleaved rounds of {GROUP} step(s) after {args.warmup} warm-up. "
              f"torch {torch.__version__}, {args.threads} threads, {_device_name()}, {os.cpu_count()} cores; load average "
              f"{load0:.1f} at the start, {load1:.1f} at the end; {time.perf_counter() - started:.0f} s. "
              f"Models: " + "; ".join(MODELS[k][0] for k in keys) + ". The panel rows come from a second "
              "phase (plain, default, default + panel). Generated by `python benchmarks/overhead.py`.\n\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(header + table + "\n")
    print("\n" + header + table)


if __name__ == "__main__":
    main()
