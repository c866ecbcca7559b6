"""Loss, learning rate, total gradient norm and the step's time split over steps: the
curves people open first.

Panels sharing the step axis. The loss and the gradient norm go on a log axis
when they span more than two decades; steps where a value is NaN/Inf are marked in
vermillion on the panel's top edge with the first such step named, instead of
silently breaking the line. The time panel stacks where each step's wall time went, as a
debug dashboard shows it: data loading (from the previous step's close to the next
forward), forward, backward, and the optimizer (without ``optimizer=``: whatever ran
between backward and ``w.step()``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import source, style

METRICS = (
    ("loss", "loss", style.BLUE),
    ("lr", "learning rate", style.GREEN),
    ("total_grad_norm", "total gradient norm\n(before clipping)", style.ORANGE),
    ("time", "step time (ms)", style.GREY),
)
TIME_PARTS = (("data_s", "data", style.GREY), ("forward_s", "forward", style.BLUE),
              ("backward_s", "backward", style.ORANGE), ("optimizer_s", "optimizer", style.GREEN))


def training_curves(src, *, ax=None, metrics=("loss", "lr", "total_grad_norm", "time")):
    """Plot per-step scalars from a Watcher or the DataFrame of ``w.steps()``.

    ``ax`` may be one Axes (split into one row per metric) or a sequence with one Axes
    per metric. Returns the matplotlib Figure.
    """
    df = _frame(src)
    metrics = [m for m in metrics if m in dict((k, v) for k, v, _ in METRICS)]
    axes, fig = _axes(ax, len(metrics))
    steps = source.column(df, "step") if "step" in df.columns else np.asarray(df.index, dtype=np.float64)
    labels = {k: (lab, col) for k, lab, col in METRICS}
    for a, metric in zip(axes, metrics, strict=True):
        label, color = labels[metric]
        if metric == "time":
            _time_split(a, df, steps, label)
            continue
        y = source.column(df, metric)
        ok = np.isfinite(y)
        bad = np.isinf(y) | (_diverged(y) if metric == "loss" else np.zeros(len(y), dtype=bool))
        if metric == "total_grad_norm":
            bad |= np.isnan(y) & (np.arange(len(y)) > (np.argmax(ok) if ok.any() else len(y)))
        if not ok.any() and not bad.any():
            style.no_data(a, f"no {label.splitlines()[0]} recorded yet"
                             + (": run a training step" if len(y) == 0 else _why_missing(metric)))
            a.set_ylabel(label, fontsize=9)
            continue
        a.plot(steps[ok], y[ok], color=color, lw=1.5, marker="o" if ok.sum() <= 30 else None, ms=3)
        if ok.any() and (y[ok] > 0).all() and y[ok].max() / y[ok].min() > 100:
            a.set_yscale("log")
        if bad.any():
            a.scatter(steps[bad], np.full(bad.sum(), 0.95), transform=a.get_xaxis_transform(), marker="X", s=40,
                      color=style.VERMILLION, clip_on=False, zorder=5)
            a.text(0.01, 0.95, f"NaN/Inf from step {int(steps[bad][0])}", transform=a.transAxes, fontsize=8,
                   color=style.VERMILLION, va="top")
        a.set_ylabel(label, fontsize=9)
        a.grid(color="#e5e5e5", lw=0.6)
    for a in axes[:-1]:
        a.tick_params(labelbottom=False)
    axes[-1].set_xlabel("training step", fontsize=9)
    style.integer_axis(axes[-1].xaxis)
    if len(axes) > 0:
        last = int(np.nanmax(steps)) if len(steps) and np.isfinite(steps).any() else None
        axes[0].set_title("Training curves" + (f" (last step {last})" if last is not None else ""), fontsize=10)
    return fig


def _time_split(a, df: pd.DataFrame, steps: np.ndarray, label: str) -> None:
    """Stacked bars: where each step's wall time went."""
    parts = [(source.column(df, c) * 1e3, name, color) for c, name, color in TIME_PARTS]
    known = np.zeros(len(steps), dtype=bool)
    for values, _, _ in parts:
        known |= np.isfinite(values)
    a.set_ylabel(label, fontsize=9)
    if not known.any():
        style.no_data(a, "no step times recorded yet" + (": run a training step" if len(steps) == 0 else ""))
        return
    bottom = np.zeros(known.sum())
    width = 0.8 * (np.median(np.diff(steps[known])) if known.sum() > 1 else 1.0)
    for values, name, color in parts:
        v = np.where(np.isfinite(values[known]), values[known], 0.0)
        a.bar(steps[known], v, bottom=bottom, width=width, color=color, label=name, linewidth=0)
        bottom += v
    a.set_ylim(0, bottom.max() * 1.35 if bottom.max() > 0 else 1.0)  # headroom for the legend
    a.legend(fontsize=7, ncol=4, loc="upper right", frameon=False)
    a.grid(axis="y", color="#e5e5e5", lw=0.6)


def _frame(src) -> pd.DataFrame:
    if isinstance(src, pd.DataFrame):
        return src
    if source.is_watcher(src):
        return src.steps()
    raise TypeError(f"gradsight: expected a Watcher or the DataFrame of w.steps(); got {type(src).__name__}.")


def _axes(ax, n: int):
    if ax is None:
        fig = style.new_figure(8.0, 1.2 + 1.6 * n)
        axes = list(np.atleast_1d(fig.subplots(n, 1, sharex=True)))
        return axes, fig
    many = np.ravel(ax) if isinstance(ax, (list, tuple, np.ndarray)) else None
    if many is not None:
        if len(many) != n:
            raise ValueError(f"gradsight: training_curves() needs {n} axes for metrics, got {len(many)}.")
        return list(many), many[0].figure
    fig = ax.figure
    spec = ax.get_subplotspec()
    if spec is None or n == 1:
        return ([ax] if n == 1 else _twins(ax, n)), fig
    ax.remove()
    sub = spec.subgridspec(n, 1, hspace=0.08)
    first = fig.add_subplot(sub[0])
    return [first] + [fig.add_subplot(sub[i], sharex=first) for i in range(1, n)], fig


def _twins(ax, n: int):
    """Fallback for axes without a grid position: twin y axes on offset spines."""
    out = [ax]
    for i in range(1, n):
        t = ax.twinx()
        t.spines["right"].set_position(("axes", 1 + 0.12 * (i - 1)))
        out.append(t)
    return out


def _diverged(y: np.ndarray) -> np.ndarray:
    """NaN losses after a finite one: the run diverged (before any, the loss was just not given)."""
    ok = np.isfinite(y)
    mask = np.isnan(y)
    if ok.any():
        mask[: int(np.argmax(ok))] = False
    else:
        mask[:] = False
    return mask


def _why_missing(metric: str) -> str:
    return {
        "loss": ":\npass it with w.step(loss) or after optimizer.step()",
        "lr": ":\nwatch with gs.watch(model, optimizer=opt)",
    }.get(metric, "")
