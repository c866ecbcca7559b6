"""Where a watched step's extra time goes: each part of the capture knocked out in turn.

    python benchmarks/cost_breakdown.py [--models mlp,cnn,transformer] [--rounds 40,24,8]

Same harness as ``overhead.py`` (every arm trains its own copy of the model on the same
batch, A/B interleaved with the plain step, the order reversed every round, median of the
per-round ratios). Each "-part" arm is the default watcher (every-step capture; no
histogram steps: ``histogram_every`` huge) or the every-step-histogram watcher
(``histogram_every=1``) with one part replaced by a no-op for the duration of that arm's
own step, so the difference to the full arm is what that part costs *in situ*
(cache and thread-pool effects included, which timing the part alone would miss):

- ``summaries``: the per-tensor summary of every output and output gradient (the light
  sum of squares, or the full row on histogram steps);
- ``param norms``: the parameter (and gradient) norms, fused, at the end of backward,
  at the optimizer step and, on histogram steps, of the weights;
- ``units``: the per-unit maxima of ReLU-family outputs (dead units);
- ``inputs``: where each module's input came from (NaN origin) and, on histogram steps,
  the copy of a few input samples kept for ``w.gradcheck(layer)``;
- ``histograms``: the octave counts and their rebinning on the host;
- ``update``: the snapshot of the weights before the optimizer step and the update norms;
- ``detectors``: the detectors' work at each step's close (the record and the history stay).

What is left with every part knocked out is the hooks themselves and gradsight's
per-step bookkeeping (Python): the step record and the history. The step's close (record,
history, detectors) is also timed directly, inside the default arm. The no-op-hook floor runs in the same rounds.
Knock-outs are benchmark-only monkeypatches; a knocked-out arm's findings are meaningless.
Writes benchmarks/results/cost_breakdown.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gradsight as gs  # noqa: E402
from gradsight.detectors.engine import DetectorEngine  # noqa: E402
from gradsight.kernel_hooks import capture as C  # noqa: E402
from gradsight.records.histogram import FINE_SLOTS  # noqa: E402
from gradsight.watcher import Watcher  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402

_OWNERS = {"measure": C, "octave_counts": C, "rebin_many": C, "update": DetectorEngine,
           **{m: C.Capture for m in ("_param_norms", "measure_step_grads", "_units", "_note_inputs",
                                      "_take_snapshot")}}
"""What each knock-out replaces: the attribute of that name on that module or class."""
_ORIG = {name: getattr(owner, name) for name, owner in _OWNERS.items()}


def _no_counts(tensors):
    return torch.zeros(FINE_SLOTS, dtype=torch.int64, device=tensors[0].device)


_CACHED_HIST = {}


def _cached_rebin(fine, bins, **kw):
    key = (len(fine), bins)
    if key not in _CACHED_HIST:
        _CACHED_HIST[key] = _ORIG["rebin_many"](np.zeros((len(fine), FINE_SLOTS), dtype=np.int64), bins)
    return _CACHED_HIST[key]


def _noop(self, *a, **k):
    return None


PARTS = {
    "summaries": {"measure": lambda x, detail, host=None: 1.0},
    "param norms": {"_param_norms": _noop, "measure_step_grads": _noop},
    "units": {"_units": _noop},
    "inputs": {"_note_inputs": _noop},
    "histograms": {"octave_counts": _no_counts, "rebin_many": _cached_rebin},
    "update": {"_take_snapshot": _noop},
    "detectors": {"update": lambda self, rec, metrics=None: []},
}
LIGHT_PARTS = ("summaries", "param norms", "units", "inputs", "detectors")
HIST_PARTS = ("summaries", "histograms", "param norms", "update", "inputs", "units")


def _apply(patch: dict) -> None:
    for name, orig in _ORIG.items():
        setattr(_OWNERS[name], name, patch.get(name, orig))


def arms_for() -> dict[str, tuple[str, dict]]:
    """label -> (watch kind, patch)."""
    arms = {"default (every-step capture)": ("light", {})}
    for p in LIGHT_PARTS:
        arms[f"  - {p}"] = ("light", PARTS[p])
    arms["  - all five"] = ("light", {k: v for p in LIGHT_PARTS for k, v in PARTS[p].items()})
    arms["histogram_every=1"] = ("hist1", {})
    for p in HIST_PARTS:
        arms[f"  - {p} "] = ("hist1", PARTS[p])
    arms["  - all six"] = ("hist1", {k: v for p in HIST_PARTS for k, v in PARTS[p].items()})
    return arms


_CLOSE: dict[str, list[float]] = {}
"""Watcher name -> seconds spent in each step's close (record, history, detectors)."""
_record_step = Watcher._record_step


def _timed_close(self, *a, **k):
    t0 = time.perf_counter()
    try:
        return _record_step(self, *a, **k)
    finally:
        _CLOSE.setdefault(self.name, []).append(time.perf_counter() - t0)


Watcher._record_step = _timed_close


def run(key: str, rounds: int, warmup: int) -> list[tuple[str, float, float, float]]:
    torch.manual_seed(0)
    _CLOSE.clear()
    base, x, y = overhead.MODELS[key][1]()
    arms = arms_for()
    built = {}
    floor_step, floor_tool = overhead.make_arm("floor", copy.deepcopy(base), x, y, "")
    plain_step, _ = overhead.make_arm("plain", copy.deepcopy(base), x, y, "")
    for label, (kind, patch) in arms.items():
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        w = gs.watch(model, histogram_every=1 if kind == "hist1" else 10**9, name=f"bd-{len(built)}")
        built[label] = (model, opt, w, patch)

    def step(label: str) -> float:
        model, opt, w, patch = built[label]
        _apply(patch)
        try:
            return overhead.train_step(model, opt, x, y, w)
        finally:
            _apply({})

    names = ["plain", "floor", *arms]
    fns = {"plain": plain_step, "floor": floor_step, **{a: (lambda a=a: step(a)) for a in arms}}
    times = {a: [] for a in names}
    for r in range(warmup + rounds):
        for a in (names if r % 2 == 0 else names[::-1]):
            dt = fns[a]()
            if r >= warmup:
                times[a].append(dt)
    floor_tool.close()
    for _, _, w, _ in built.values():
        w.close()
    plain = statistics.median(times["plain"])
    rows = []
    for a in names:
        ratio = statistics.median(t / p for t, p in zip(times[a], times["plain"], strict=True))
        cost = float("nan")
        if a.startswith("  - "):  # paired per round: (full arm - this arm) / plain, the median
            parent = "histogram_every=1" if arms[a][0] == "hist1" else "default (every-step capture)"
            cost = statistics.median((f - k) / p for f, k, p in
                                     zip(times[parent], times[a], times["plain"], strict=True))
        rows.append((a, statistics.median(times[a]) * 1e3, ratio, plain * 1e3, cost))
    close = _CLOSE.get(built["default (every-step capture)"][2].name, [])[warmup:]
    rows.append(("close", statistics.median(close) * 1e3 if close else float("nan"), float("nan"), plain * 1e3,
                 float("nan")))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mlp,cnn,transformer")
    ap.add_argument("--rounds", default="40,24,8", help="A/B rounds per model, in --models order")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cost_breakdown.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keys = args.models.split(",")
    rounds = [int(r) for r in args.rounds.split(",")]
    load0, t0 = os.getloadavg()[0], time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = {k: run(k, rounds[min(i, len(rounds) - 1)], args.warmup) for i, k in enumerate(keys)}
    broken = [str(c.message) for c in caught if "internal error" in str(c.message)]
    if broken:  # a knock-out that breaks the capture would time something else
        raise SystemExit("a knocked-out arm broke the capture:\n" + "\n".join(broken[:5]))
    load1 = os.getloadavg()[0]
    lines = [
        "# Where a watched step's time goes (CPU)",
        "",
        f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores; load average {load0:.1f} at the "
        f"start, {load1:.1f} at the end; {time.time() - t0:.0f} s; A/B rounds {args.rounds}. Each '- part' row is "
        "the full arm above it with that part knocked out, and that part's cost: the median over rounds of (full "
        "arm - knocked-out arm) / plain step, in % and in ms of the median plain step. A single part's cost is "
        "within this harness's noise (about +-0.5 ms on the MLP, more on the transformer's few rounds; a negative "
        "cost is noise); the rows with every part knocked out are the firm ones. Generated by "
        "`python benchmarks/cost_breakdown.py` (see its docstring).",
        "",
        "| arm | " + " | ".join(f"{overhead.MODELS[k][0].split(',')[0]}: ratio; cost" for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    labels = [r[0] for r in results[keys[0]]][:-1]
    for n, label in enumerate(labels):
        cells = []
        for k in keys:
            _, ms, ratio, plain, cost = results[k][n]
            if label == "plain":
                cells.append(f"{ms:.1f} ms")
            elif label.startswith("  - "):
                cells.append(f"{ratio:.2f}x; {cost * plain:+.2f} ms ({cost:+.1%})")
            else:
                cells.append(f"{ratio:.2f}x ({ms:.1f} ms)")
        shown = {"floor": "no-op hooks (the floor)", "plain": "plain step"}.get(label, label.strip())
        if label.startswith("  - "):
            shown = "&nbsp;&nbsp;" + shown
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    lines += ["", "The default arm's step close (record, history, detectors; timed inside the step, median): " + "; ".join(
        f"{overhead.MODELS[k][0].split(',')[0]} {results[k][-1][1]:.2f} ms ({results[k][-1][1] / results[k][-1][3]:.1%} "
        "of the plain step)" for k in keys) + "."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
