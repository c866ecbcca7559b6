"""The GPU run of issue 16, as one short script for a lent GPU machine.

    python benchmarks/gpu_check.py [--device cuda] [--models mlp,cnn,transformer,gpt2] [--out DIR]

1. Host syncs per step: each arm's steps run under ``torch.profiler`` (CPU + CUDA activity)
   and every CUDA runtime call that blocks the host is counted (``cudaStreamSynchronize``,
   ``cudaEventSynchronize``, ``cudaDeviceSynchronize``, blocking ``cudaMemcpy``); the plain
   step is the baseline, and a watched arm may add at most one per step. As a cross-check,
   ``torch.cuda.set_sync_debug_mode("warn")`` counts the synchronizing ops PyTorch flags.
2. Bit-identical: the MLP trained 3 steps plain and watched (default, histograms every
   step) on the device ends with identical parameters.
3. Peak device memory (``torch.cuda.max_memory_allocated``), watched vs plain.
4. ``benchmarks/overhead.py --device cuda`` on the same models (floor, peers, gradsight).
Writes ``gpu_check.md`` (and the overhead table ``overhead_gpu.md``) into ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402

SYNC_CALLS = ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaDeviceSynchronize", "cudaMemcpy")
COUNT_ARMS = ("plain", "default", "hist1", "record")


def _build(key: str, arm: str, tmp: str):
    """(one training step of ``arm``, what to close, the model) on the device, seeded."""
    torch.manual_seed(0)
    model, x, y = overhead.MODELS[key][1]()
    model = model.to(overhead.DEVICE)
    return (*overhead.make_arm(arm, model, x.to(overhead.DEVICE), y.to(overhead.DEVICE), tmp), model)


def count_syncs(key: str, arm: str, steps: int = 5) -> dict[str, float]:
    """Blocking CUDA runtime calls per step (profiler) and flagged sync ops per step (debug mode)."""
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        step, closer, _ = _build(key, arm, tmp)
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
        if overhead.DEVICE.type == "cuda":
            torch.cuda.synchronize()
        names = [e.name for e in prof.events()]
        by_call = {c: sum(1 for n in names if n == c) for c in SYNC_CALLS}
        flagged = 0
        if overhead.DEVICE.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for _ in range(steps):
                        step()
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            flagged = sum(1 for w in caught if "synchroniz" in str(w.message))
        if closer is not None:
            closer.close()
    runtime = collections.Counter(n for n in names if n.startswith("cuda"))
    return {"per_step": sum(by_call.values()) / steps, "flagged_per_step": flagged / steps,
            "runtime_calls_per_step": {n: c / steps for n, c in runtime.most_common(8)},
            **{c: v / steps for c, v in by_call.items()}}


def bit_identical(key: str = "mlp", steps: int = 3) -> dict[str, bool]:
    def train(arm: str):
        with tempfile.TemporaryDirectory() as tmp:
            step, closer, model = _build(key, arm, tmp)
            for _ in range(steps):
                step()
            if closer is not None:
                closer.close()
            return [p.detach().cpu().clone() for p in model.parameters()]

    plain = train("plain")
    return {arm: all(torch.equal(a, b) for a, b in zip(plain, train(arm), strict=True))
            for arm in ("default", "hist1")}


def sanity(key: str, steps: int = 4) -> dict:
    """A default and a histogram-every-step watcher trained ``steps`` steps on the device:
    every layer has finite gradient norms every step, and gradsight warned nothing (an error
    inside a hook is reported as a warning, and would make every figure meaningless)."""
    out = {}
    for arm in ("default", "hist1"):
        with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("always")
            step, watcher, _ = _build(key, arm, tmp)
            for _ in range(steps):
                step()
            h = watcher.history("grad_norm")
            hist = watcher.histogram(watcher.layers()["layer"].iloc[1], of="grad") if arm == "hist1" else None
            watcher.close()
        msgs = sorted({str(w.message)[:200] for w in caught if "nomaly" not in str(w.message)})
        out[arm] = {"steps": len(h), "layers": h.shape[1], "finite": bool(len(h) and np.isfinite(h.to_numpy()).all()),
                    "histogram_total": None if hist is None else int(hist.total), "warnings": msgs}
    return out


def peak_memory(key: str, arm: str, steps: int = 6) -> float:
    """Peak device memory (MiB) of training ``arm`` alone for ``steps`` steps."""
    gc.collect()
    if overhead.DEVICE.type != "cuda":
        return float("nan")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        step, closer, _ = _build(key, arm, tmp)
        for _ in range(steps):
            step()
        if closer is not None:
            closer.close()
    del step, closer
    return torch.cuda.max_memory_allocated() / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="mlp,cnn,transformer,gpt2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--overhead-models", default=None, help="models of the overhead table (default: --models)")
    ap.add_argument("--arms", default="floor,naive,anomaly,default,hist1,nan_trace,record")
    ap.add_argument("--panel", action="store_true", help="also the panel phase of the overhead table")
    args = ap.parse_args()
    overhead.DEVICE = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = args.models.split(",")
    report: dict = {"device": overhead._device_name(), "torch": torch.__version__}
    report["bit_identical_mlp"] = bit_identical()
    print(json.dumps(report), flush=True)
    report["sanity"] = {k: sanity(k) for k in keys}
    print(json.dumps(report["sanity"]), flush=True)
    report["syncs"] = {k: {a: count_syncs(k, a) for a in COUNT_ARMS} for k in keys}
    print(json.dumps(report["syncs"]), flush=True)
    report["peak_mib"] = {k: {a: peak_memory(k, a) for a in ("plain", "default", "hist1")} for k in keys}
    print(json.dumps(report["peak_mib"]), flush=True)
    lines = [f"# GPU check ({report['device']}, torch {report['torch']})", "",
             f"Watched training bit-identical to plain (MLP, 3 steps on the device): {report['bit_identical_mlp']}", "",
             f"Sanity (4 watched steps per model: history rows, finite, gradsight's warnings): "
             f"`{json.dumps(report['sanity'])}`", "",
             "Host syncs per step added by watching (blocking CUDA runtime calls under torch.profiler, "
             "the plain step's own subtracted; in brackets: synchronizing ops flagged by "
             "`torch.cuda.set_sync_debug_mode`):", "",
             "| model | " + " | ".join(COUNT_ARMS[1:]) + " |", "|---|" + "---:|" * (len(COUNT_ARMS) - 1)]
    for k in keys:
        s = report["syncs"][k]
        lines.append(f"| {k} | " + " | ".join(
            f"{s[a]['per_step'] - s['plain']['per_step']:.1f} ({s[a]['flagged_per_step'] - s['plain']['flagged_per_step']:.1f})"
            for a in COUNT_ARMS[1:]) + " |")
    lines += ["", "Peak device memory (`torch.cuda.max_memory_allocated`, MiB), watched vs plain:", "",
              "| model | plain | default | hist1 |", "|---|---:|---:|---:|"]
    for k in keys:
        m = report["peak_mib"][k]
        lines.append(f"| {k} | {m['plain']:.0f} | {m['default']:.0f} ({100 * (m['default'] / m['plain'] - 1):+.1f}%) "
                     f"| {m['hist1']:.0f} ({100 * (m['hist1'] / m['plain'] - 1):+.1f}%) |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print("\n".join(lines), flush=True)
    sys.argv = ["overhead.py", "--device", args.device, "--models", args.overhead_models or args.models,
                "--steps", str(args.steps), "--warmup", str(args.warmup), "--arms", args.arms,
                "--out", str(out / "overhead_gpu.md"), "--threads", str(torch.get_num_threads()),
                *([] if args.panel else ["--no-panel"])]
    overhead.main()


if __name__ == "__main__":
    main()
