"""gs.gradcheck vs torch.autograd.gradcheck: time and verdicts, side by side.

Each case is checked by both tools in full and fast mode with the same eps/atol/rtol
on the same float64 tensors (torch checks module parameters through
torch.func.functional_call, as one has to). Runs are interleaved A/B (the order
flips each repeat) after one warm-up each; the table gives medians of wall-clock
time, the ratio of medians, and the ratio of median CPU time (steadier on a shared
machine). Verdicts must be identical: a case with a planted bug checks that both
tools fail it. Writes the table to benchmarks/results/gradcheck.md.

    python benchmarks/gradcheck.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradsight.gradcheck import gradcheck  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gradcheck.md"
TOL = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}


class TanhProduct(torch.autograd.Function):
    """tanh(x * w)**2 in the setup_context style with a generated vmap rule."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w):
        return torch.tanh(x * w) ** 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        t = torch.tanh(x * w)
        d = g * 2 * t * (1 - t * t)
        return d * w, d * x


class TanhProductClassic(torch.autograd.Function):
    """The same function in the classic forward(ctx, ...) style, which vmap cannot run."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return torch.tanh(x * w) ** 2

    @staticmethod
    def backward(ctx, g):
        return TanhProduct.backward(ctx, g)


class TanhProductBug(TanhProduct):
    """A planted bug: the gradient of w misses the factor 2."""

    @staticmethod
    def backward(ctx, g):
        dx, dw = TanhProduct.backward(ctx, g)
        return dx, dw / 2


def f64(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def module_case(module, x):
    """(torch's fn and inputs, gradsight's fn and inputs) for a module and its input."""
    module = module.double()
    x = x.requires_grad_()
    params = {k: v.detach().clone().requires_grad_() for k, v in module.named_parameters()}
    names = list(params)

    def fn(x, *ps):
        return torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    return (fn, (x, *params.values())), (module, (x,))


def function_case(fn, *shapes):
    args = tuple(f64(*s, seed=i).requires_grad_() for i, s in enumerate(shapes))
    return (fn, args), (fn, args)


def cases():
    torch.manual_seed(0)
    return [
        ("nn.Linear(64, 64), input 4x64", *module_case(nn.Linear(64, 64), f64(4, 64, seed=0))),
        ("nn.Conv2d(8, 8, 3), input 1x8x8x8", *module_case(nn.Conv2d(8, 8, 3), f64(1, 8, 8, 8, seed=0))),
        ("custom Function, 16x16 (setup_context, vmap rule)", *function_case(TanhProduct.apply, (16, 16), (16, 16))),
        ("custom Function, 16x16 (classic ctx style)",
         *function_case(TanhProductClassic.apply, (16, 16), (16, 16))),
        ("custom Function, 16x16, planted bug in grad of w",
         *function_case(TanhProductBug.apply, (16, 16), (16, 16))),
    ]


def run_torch(fn, args, fast):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.autograd.gradcheck(fn, args, fast_mode=fast, raise_exception=False, **TOL)


def run_gs(fn, args, fast):
    return gradcheck(fn, *args, mode="fast" if fast else "full", **TOL).passed


def timed(f):
    c, w = time.process_time(), time.perf_counter()
    out = f()
    return time.perf_counter() - w, time.process_time() - c, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per tool, case and mode")
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    start = time.perf_counter()

    rows = []
    for name, (tfn, targs), (gfn, gargs) in cases():
        for fast in (False, True):
            reps = args.repeats * (3 if fast else 1)
            tools = {
                "torch": lambda tfn=tfn, targs=targs, fast=fast: run_torch(tfn, targs, fast),
                "gs": lambda gfn=gfn, gargs=gargs, fast=fast: run_gs(gfn, gargs, fast),
            }
            verdict = {k: f() for k, f in tools.items()}  # warm-up, and the verdicts
            wall = {k: [] for k in tools}
            cpu = {k: [] for k in tools}
            for r in range(reps):
                for k in (("torch", "gs") if r % 2 == 0 else ("gs", "torch")):
                    w, c, v = timed(tools[k])
                    assert v == verdict[k], f"{k} changed its verdict on {name}"
                    wall[k].append(w)
                    cpu[k].append(c)
            med = {k: statistics.median(v) for k, v in wall.items()}
            cmed = {k: statistics.median(v) for k, v in cpu.items()}
            rows.append({
                "case": name, "mode": "fast" if fast else "full", "torch_ms": 1e3 * med["torch"],
                "gs_ms": 1e3 * med["gs"], "speedup": med["torch"] / med["gs"],
                "cpu_speedup": cmed["torch"] / cmed["gs"], "torch_verdict": verdict["torch"],
                "gs_verdict": verdict["gs"], "runs": reps,
            })
            print(f"  {name} [{rows[-1]['mode']}]: torch {rows[-1]['torch_ms']:.1f} ms, gradsight "
                  f"{rows[-1]['gs_ms']:.1f} ms, x{rows[-1]['speedup']:.1f}", file=sys.stderr)

    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    def verdict(v):
        return "pass" if v else "FAIL"

    lines = [
        "# gradsight gradcheck vs torch.autograd.gradcheck",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()} "
        f"({platform.processor() or 'cpu'}), Python {platform.python_version()}; "
        f"eps={TOL['eps']}, atol={TOL['atol']}, rtol={TOL['rtol']}; "
        f"interleaved A/B runs after a warm-up, medians. {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} at the start and {load_after:.1f} at the end (other processes share the "
        f"CPUs: compare ratios, not times). {time.perf_counter() - start:.0f} s in all. Generated by "
        "`python benchmarks/gradcheck.py`.",
        "",
        "| case | mode | torch (ms) | gradsight (ms) | speed-up (wall) | speed-up (CPU) | verdict torch / gradsight | runs |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        same = "same" if r["torch_verdict"] == r["gs_verdict"] else "**DIFFERENT**"
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['torch_ms']:.1f} | {r['gs_ms']:.1f} | {r['speedup']:.1f}x | "
            f"{r['cpu_speedup']:.1f}x | {verdict(r['torch_verdict'])} / {verdict(r['gs_verdict'])} ({same}) | "
            f"{r['runs']} |"
        )
    lines += [
        "",
        "Full mode batches the perturbed evaluations through torch.func.vmap (a classic-style Function",
        "runs forward-only under vmap, see gradsight/gradcheck/classic.py); functions vmap cannot run",
        "fall back to one call per point. Fast mode: both tools make a handful of calls, so fixed",
        "costs dominate. torch's fast mode, on failure, builds the full Jacobians for its message.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)
    if any(r["torch_verdict"] != r["gs_verdict"] for r in rows):
        sys.exit("verdicts differ")


if __name__ == "__main__":
    main()
