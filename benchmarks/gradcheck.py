"""gs.gradcheck vs torch.autograd.gradcheck: time and verdicts, side by side.

Each case is checked by both tools in full and fast mode with the same eps/atol/rtol
on the same float64 tensors (torch checks module parameters through
torch.func.functional_call, as one has to). Runs are interleaved A/B (the order
flips each repeat) after one warm-up each; the table gives medians of wall-clock
time, the ratio of medians, and the ratio of median CPU time (steadier on a shared
machine). Verdicts must be identical: a case with a planted bug checks that both
tools fail it. Writes the table, and where the time goes in the case with the smallest full-mode
ratio, to benchmarks/results/gradcheck.md (keeping its OpInfo section); with ``--only`` it prints
them and leaves the file alone.

    python benchmarks/gradcheck.py [--repeats 5] [--threads 1] [--only NAME]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradsight.gradcheck import gradcheck  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gradcheck.md"
TOL = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}
OPINFO_SECTION = "## OpInfo agreement"  # the rest of the results file, kept as it is


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


# -- user-style custom Functions: what people write by hand and then gradcheck --------------------------

class LayerNormFn(torch.autograd.Function):
    """LayerNorm over the last dim with a hand-written backward (classic ctx style)."""

    @staticmethod
    def forward(ctx, x, w, b):
        xc = x - x.mean(-1, keepdim=True)
        rstd = ((xc * xc).mean(-1, keepdim=True) + 1e-5).rsqrt()
        xhat = xc * rstd
        ctx.save_for_backward(xhat, rstd, w)
        return xhat * w + b

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, w = ctx.saved_tensors
        n = xhat.shape[-1]
        gh = g * w
        gx = rstd * (gh - gh.mean(-1, keepdim=True) - xhat * (gh * xhat).mean(-1, keepdim=True))
        return gx, (g * xhat).reshape(-1, n).sum(0), g.reshape(-1, n).sum(0)


class AttentionFn(torch.autograd.Function):
    """softmax(q kᵀ / √d) v with a hand-written backward."""

    @staticmethod
    def forward(ctx, q, k, v):
        p = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        ctx.save_for_backward(q, k, v, p)
        return p @ v

    @staticmethod
    def backward(ctx, g):
        q, k, v, p = ctx.saved_tensors
        gp = g @ v.transpose(-1, -2)
        gs = p * (gp - (gp * p).sum(-1, keepdim=True)) / math.sqrt(q.shape[-1])
        return gs @ k, gs.transpose(-1, -2) @ q, p.transpose(-1, -2) @ g


class ConvFn(torch.autograd.Function):
    """A 3x3 convolution (padding 1) whose backward calls torch.nn.grad."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, padding=1)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return (torch.nn.grad.conv2d_input(x.shape, w, g, padding=1),
                torch.nn.grad.conv2d_weight(x, w.shape, g, padding=1))


def f64(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _torch(fn, args):
    def run(fast):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.autograd.gradcheck(fn, args, fast_mode=fast, raise_exception=False, **TOL)
    return run


def _gs(fn, args):
    return lambda fast: gradcheck(fn, *args, mode="fast" if fast else "full", **TOL).passed


def module_case(module, x):
    """(torch's run, gradsight's run) for a module and its input; torch checks the parameters through
    torch.func.functional_call, as one has to."""
    module = module.double()
    x = x.requires_grad_()
    params = {k: v.detach().clone().requires_grad_() for k, v in module.named_parameters()}
    names = list(params)

    def fn(x, *ps):
        return torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    return _torch(fn, (x, *params.values())), _gs(module, (x,))


def function_case(fn, *shapes):
    args = tuple(f64(*s, seed=i).requires_grad_() for i, s in enumerate(shapes))
    return _torch(fn, args), _gs(fn, args)


def watched_gpt2():
    """A random-init GPT-2 (n_embd 16, 2 heads, one block) watched by gradsight, after one training
    step on 2 x 8 tokens: ``(model, watcher)``, ready for ``w.gradcheck("h.0")``. The one definition
    of this case, for this benchmark and tests/test_gradcheck_in_model.py (transformers loads here,
    never in gradsight's core). The watcher holds the model weakly: keep ``model`` alive."""
    from transformers import GPT2Config, GPT2Model

    import gradsight as gs

    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=16, n_head=2, n_layer=1, n_positions=16, vocab_size=50, bos_token_id=0,
                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = GPT2Model(cfg)
    w = gs.watch(model)
    loss = model(torch.randint(0, 50, (2, 8))).last_hidden_state.pow(2).mean()
    loss.backward()
    w.step(loss)
    return model, w


def gpt2_block_case():
    """``w.gradcheck("h.0")`` in :func:`watched_gpt2` against torch's gradcheck of the same block on
    the same captured inputs and parameters."""
    from gradsight.gradcheck.in_model import slice_batch
    from gradsight.gradcheck.inputs import state_copy

    model, w = watched_gpt2()
    block = model.h[0]
    entry = w._capture.last_inputs[w._layer_index("h.0", "gradcheck")]
    args, kwargs = slice_batch(entry[1], entry[2])
    x = args[0].detach().double().requires_grad_()
    params = {k: v.detach().double().requires_grad_() for k, v in block.named_parameters()}
    buffers = {k: v.double() if v.is_floating_point() else v for k, v in block.named_buffers()}
    names = list(params)

    def fn(x, *ps):  # a fresh copy of the captured KV cache per call, as gradsight does
        state = {**buffers, **dict(zip(names, ps, strict=True))}
        rest = state_copy(tuple(args[1:]))
        return torch.func.functional_call(block, state, (x, *rest), state_copy(kwargs))[0]

    def run_gs(fast, model=model):  # the watcher holds the model weakly: keep it alive here
        return w.gradcheck("h.0", mode="fast" if fast else "full", **TOL).passed

    return _torch(fn, (x, *params.values())), run_gs


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
        ("custom LayerNorm Function, x 2x8x16", *function_case(LayerNormFn.apply, (2, 8, 16), (16,), (16,))),
        ("custom LayerNorm Function, x 4x8x32", *function_case(LayerNormFn.apply, (4, 8, 32), (32,), (32,))),
        ("custom attention Function, q/k/v 2x8x8", *function_case(AttentionFn.apply, *[(2, 8, 8)] * 3)),
        ("custom attention Function, q/k/v 2x16x16", *function_case(AttentionFn.apply, *[(2, 16, 16)] * 3)),
        ("custom conv Function, x 1x4x8x8, w 4x4x3x3", *function_case(ConvFn.apply, (1, 4, 8, 8), (4, 4, 3, 3))),
        ("custom conv Function, x 2x4x8x8, w 4x4x3x3", *function_case(ConvFn.apply, (2, 4, 8, 8), (4, 4, 3, 3))),
        ("w.gradcheck('h.0'): GPT-2 block, n_embd 16, 2 x 8 tokens", *gpt2_block_case()),
    ]


SPLIT = {  # (file, function) in gradsight/gradcheck: the parts of a full check
    "analytic Jacobian (batched backward passes)": [("jacobian.py", "rows"), ("jacobian.py", "columns")],
    "numeric Jacobian (batched forward evaluations)": [("jacobian.py", "numeric_chunks")],
    "comparison of the entries": [("compare.py", "add")],
    "set-up (first call with autograd, determinism call)": [("evaluate.py", "__init__")],
}


def time_split(run_gs, repeats: int = 3) -> list[tuple[str, float]]:
    """Where a full check spends its time: ms per check under cProfile (cumulative), by part."""
    import cProfile
    import pstats

    run_gs(False)
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    for _ in range(repeats):
        run_gs(False)
    prof.disable()
    total = (time.perf_counter() - start) / repeats
    stats = pstats.Stats(prof).stats  # {(file, line, function): (cc, nc, tottime, cumtime, callers)}
    out = []
    for part, keys in SPLIT.items():
        sec = sum(v[3] for (f, _, fn), v in stats.items()
                  if any(f.endswith(f"gradcheck{os.sep}{k}") and fn == name for k, name in keys))
        out.append((part, 1e3 * sec / repeats))
    out.append(("the whole check (under cProfile)", 1e3 * total))
    return out


def timed(f):
    c, w = time.process_time(), time.perf_counter()
    out = f()
    return time.perf_counter() - w, time.process_time() - c, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per tool, case and mode")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: steadiest on a shared machine; say so with the figures)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    start = time.perf_counter()

    rows = []
    only = [c for c in cases() if not args.only or args.only in c[0]]
    for name, run_torch, run_gs in only:
        for fast in (False, True):
            reps = args.repeats * (3 if fast else 1)
            tools = {
                "torch": lambda run_torch=run_torch, fast=fast: run_torch(fast),
                "gs": lambda run_gs=run_gs, fast=fast: run_gs(fast),
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
    full = [r for r in rows if r["mode"] == "full"]
    worst = min(full, key=lambda r: r["speedup"])
    split = time_split(next(run_gs for name, _, run_gs in only if name == worst["case"]))
    lines += [
        "",
        f"Full mode: {worst['speedup']:.1f}x to {max(r['speedup'] for r in full):.1f}x faster than torch's "
        "(wall-clock medians) on these cases.",
        "",
        f"Where gradsight's time goes in the case with the smallest full-mode ratio ({worst['case']}; "
        "cProfile, cumulative ms per check; the rest of the whole is copies and bookkeeping):",
        "",
        "| part | ms |",
        "|---|---:|",
        *[f"| {part} | {ms:.1f} |" for part, ms in split],
        "",
        "Full mode batches the perturbed evaluations through torch.func.vmap (a classic-style Function",
        "runs forward-only under vmap, see gradsight/gradcheck/classic.py), and the analytic rows (one",
        "vector-Jacobian product per output element) through torch.func.vmap over one backward pass per",
        "chunk; functions or backwards vmap cannot run fall back to autograd's is_grads_batched, then to",
        "one call per point. Fast mode: both tools make a handful of calls, so fixed costs dominate.",
        "torch's fast mode, on failure, builds the full Jacobians for its message.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.only:
        print(f"(--only: {RESULTS} is left as it is; it holds the whole set of cases)", file=sys.stderr)
    else:
        write_results(table)
    if any(r["torch_verdict"] != r["gs_verdict"] for r in rows):
        sys.exit("verdicts differ")


def write_results(table: str) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = RESULTS.read_text() if RESULTS.exists() else ""
    kept = old[old.index(OPINFO_SECTION):] if OPINFO_SECTION in old else ""  # written by gradcheck_opinfo.py
    RESULTS.write_text(table + ("\n" + kept if kept else ""))


if __name__ == "__main__":
    main()
