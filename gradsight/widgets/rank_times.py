"""Per-rank step times of a torch.distributed run, and the rank that went wrong first.

Top: each rank's step time over steps (``history("step_s", rank=r)``), the chosen rank drawn
bold, the others grey, so a straggler stands out; a vermillion line marks the step where the
first rank went wrong ("rank 1 went wrong first, step 7"). Bottom: each rank's median forward,
backward and all-reduce time (``ranks()``), the chosen rank's label in bold. Works on any source
with the Watcher's rank API (a live watcher in the job, a recording with a rank dimension).
"""

from __future__ import annotations

import numpy as np

from . import source, style

PARTS = (("forward_s", "forward", style.BLUE), ("backward_s", "backward", style.ORANGE),
         ("allreduce_s", "all-reduce", style.GREEN))


def first_bad_text(bad: dict | None) -> str:
    """One line for the rank that went wrong first (shared by the figure and the dashboard)."""
    if bad is None:
        return ""
    where = f" at {style.short_name(bad['layer'], 40)!r}" if bad.get("layer") else ""
    return f"rank {bad['rank']} went wrong first, step {bad['step']} ({bad['kind']}{where})"


def rank_times(src, *, selected: int | None = None, findings=None):
    """Plot per-rank step times of ``src`` (world size > 1); ``selected``: the rank drawn bold
    (default: this process's rank). Returns the matplotlib Figure."""
    world = source.world_size(src)
    fig = style.new_figure(10, 5.2)
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 2))
    if world < 2:
        style.no_data(top, "one process: no ranks to compare (world size 1)")
        bottom.set_visible(False)
        return fig
    if selected is None:
        selected = int(getattr(src, "rank", 0) or 0)
    bad = source.first_bad_rank(source.findings_frame(src, findings))
    _times(top, src, world, selected, bad)
    _medians(bottom, src, world, selected, bad)
    return fig


def _times(ax, src, world: int, selected: int, bad: dict | None) -> None:
    drawn = False
    for r in range(world):
        try:
            df = src.history("step_s", rank=r)
        except Exception:
            continue
        steps = np.asarray(df.index, dtype=np.float64)
        y = source.column(df, "step_s") * 1000
        ok = np.isfinite(y)
        if not ok.any():
            continue
        drawn = True
        chosen = r == selected
        color = style.BLUE if chosen else (style.VERMILLION if bad and bad["rank"] == r else style.GREY)
        ax.plot(steps[ok], y[ok], color=color, lw=2.2 if chosen else 1.0, alpha=1.0 if chosen else 0.7,
                label=f"rank {r}", zorder=3 if chosen else 2)
    if not drawn:
        style.no_data(ax, "no per-rank step times yet: run a training step")
        return
    if bad is not None:
        ax.axvline(bad["step"], color=style.VERMILLION, ls="--", lw=1.2)
        ax.text(bad["step"], 0.02, f" step {bad['step']}", transform=ax.get_xaxis_transform(),
                color=style.VERMILLION, fontsize=8, va="bottom", ha="left")
        ax.figure.suptitle(first_bad_text(bad), color=style.VERMILLION, fontsize=11, fontweight="bold")
    ax.set_ylabel("step time (ms)", fontsize=9)
    ax.set_xlabel("step", fontsize=9)
    style.integer_axis(ax.xaxis)
    ax.legend(fontsize=8, ncol=min(world, 8), loc="best", frameon=False)
    ax.set_title(f"per-rank step time — world size {world}, rank {selected} selected", fontsize=11)


def _medians(ax, src, world: int, selected: int, bad: dict | None) -> None:
    try:
        table = src.ranks()
    except Exception as exc:
        style.no_data(ax, f"no rank table: {exc}")
        return
    x = np.arange(world)
    width = 0.8 / len(PARTS)
    handles, top = [], 0.0
    for k, (col, name, color) in enumerate(PARTS):
        y = source.column(table, col)[:world] * 1000
        ok = np.isfinite(y)  # unmeasured (e.g. no timed DDP comm hook): no bar, said in the legend
        if ok.any():
            handles.append(ax.bar((x + (k - 1) * width)[ok], y[ok], width, color=color, label=name))
            top = max(top, float(y[ok].max()))
        else:
            handles.append(ax.plot([], [], color=color, lw=6, label=f"{name} (not measured)")[0])
    if top > 0:
        ax.set_ylim(0, top * 1.35)  # room for the legend above the bars
    ax.set_xticks(x)
    ax.set_xticklabels([f"rank {r}" for r in x], fontsize=8)
    for r, lab in zip(x, ax.get_xticklabels(), strict=True):
        if r == selected:
            lab.set_fontweight("bold")
        if bad is not None and r == bad["rank"]:
            lab.set_color(style.VERMILLION)
    ax.set_ylabel("median (ms)", fontsize=9)
    ax.legend(handles=handles, fontsize=8, ncol=len(PARTS), loc="upper left", frameon=False)
