"""Ops a watched step dispatches on an accelerator, counted without one.

    python benchmarks/device_ops.py [--models mlp,cnn,transformer]

On a GPU each aten op that computes is a kernel launch, and launches — not bytes — are
what a watched step of a small or mid-sized model pays for (measured on an H200 in
``benchmarks/results/gpu_check.md``: launches went from 28 to 280 per MLP step and from
598 to 5,057 per GPT-2 step). PyTorch's meta device runs the same code path as a GPU
(gradsight takes its device path: no host reads) without computing anything, so a
``TorchDispatchMode`` counting the ops of a meta-device step counts the launches a GPU
would see, here, on any machine. Views and metadata ops are not counted (they launch
nothing). Writes ``benchmarks/results/device_ops.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gradsight as gs  # noqa: E402
from gradsight.kernel_hooks.step_buffer import StepBuffer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402

_FREE = {"aten.view", "aten._unsafe_view", "aten.t", "aten.transpose", "aten.expand", "aten.permute",
         "aten.select", "aten.slice", "aten.as_strided", "aten.detach", "aten.alias", "aten.unsqueeze",
         "aten.squeeze", "aten._reshape_alias", "aten.reshape", "aten.split", "aten.unbind"}


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) not in _FREE:
            self.n += 1
        return func(*args, **(kwargs or {}))


def _fake_fetch(self, with_hist, loss=None):
    """The step's transfer (a meta tensor holds no data): its copies are counted as the GPU
    path's (data, histograms on detail steps, the loss); zeros are returned."""
    _ACTIVE[-1].n += 1 + bool(with_hist) + (loss is not None)
    self._loss = None
    return (np.zeros(self.data.numel(), dtype=np.float32),
            np.zeros(tuple(self.hist.shape), dtype=np.int64) if with_hist else None)


_ACTIVE: list[Count] = []


def per_step(key: str, arm: str, steps: int = 6) -> float:
    torch.manual_seed(0)
    model, x, y = overhead.MODELS[key][1]()
    model, x, y = model.to("meta"), x.to("meta"), y.to("meta")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    w = None if arm == "plain" else gs.watch(model, histogram_every=1 if arm == "hist1" else 10)
    counts = []
    for _ in range(steps):
        with Count() as c:
            _ACTIVE.append(c)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if w is not None:
                w.step(loss)
        counts.append(c.n)
    if w is not None:
        assert not w.errors, w.errors
        w.close()
    return sorted(counts[1:])[len(counts[1:]) // 2]  # the median light step (hist1: every step is detail)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mlp,cnn,transformer")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "device_ops.md"))
    args = ap.parse_args()
    keys = args.models.split(",")
    StepBuffer.fetch = _fake_fetch
    rows = {k: {a: per_step(k, a) for a in ("plain", "default", "hist1")} for k in keys}
    lines = ["Aten ops dispatched per training step on the meta device (what a GPU launches; "
             "median step; `python benchmarks/device_ops.py`):", "",
             "| model | plain | `gs.watch(model)` | `histogram_every=1` |", "|---|---:|---:|---:|"]
    for k in keys:
        r = rows[k]
        lines.append(f"| {overhead.MODELS[k][0]} | {r['plain']:.0f} | {r['default']:.0f} (+{r['default'] - r['plain']:.0f}) "
                     f"| {r['hist1']:.0f} (+{r['hist1'] - r['plain']:.0f}) |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
