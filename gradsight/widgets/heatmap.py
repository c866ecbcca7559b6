"""Layer × step heatmap of a per-layer metric (gradient norm by default): where and when.

Colour is the metric on a log scale (viridis), so a gradient that vanishes shows as a
dark band spreading toward the input and an explosion as a bright front. Cells with
NaN/Inf are drawn in vermillion with an ×, exact zeros in black, and steps where the
layer was not seen in light grey — three different things a plain colour map would
merge.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import source, style

MARK_MAX = 3000  # above this many non-finite cells the colour alone marks them


def heatmap(src, metric: str = "grad_norm", *, ax=None, leaves_only: bool = True, nonfinite=None,
            findings=None, max_labels: int = 50):
    """Plot ``metric`` for every layer (rows, model order) and recorded step (columns).

    ``src`` is a Watcher or the DataFrame of ``w.history(metric)``. ``nonfinite`` is an
    optional steps × layers frame of NaN/Inf counts (read from the watcher by default).
    Returns the matplotlib Figure.
    """
    hist = source.history_frame(src, metric)
    names = [str(c) for c in hist.columns]
    idx = source.leaf_layers(names) if leaves_only else list(range(len(names)))
    n_layers = len(idx)
    fig, ax = style.figure_and_axes(ax, width=9.0, height=max(3.6, min(9.0, 1.6 + 0.12 * n_layers)))
    title = f"{_pretty(metric)} per layer and step"
    if hist.empty or n_layers == 0:
        style.no_data(ax, title=title)
        return fig
    values = hist.to_numpy(dtype=np.float64)[:, idx].T  # layers × steps
    steps = np.asarray(hist.index, dtype=np.int64)
    bad = _nonfinite(src, metric, nonfinite, hist, idx) | np.isinf(values)
    good = style.finite_positive(values)
    if not good.any() and not bad.any() and not (values == 0).any():
        style.no_data(ax, title=title)
        return fig

    from matplotlib.colors import ListedColormap, LogNorm

    if good.any():
        vmin, vmax = float(values[good].min()), float(values[good].max())
        if vmax <= vmin:
            vmin, vmax = vmin / 2, vmax * 2
    else:
        vmin, vmax = 1e-8, 1.0
    cmap = _cmap().with_extremes(under=style.BLACK, bad="#eeeeee")
    shown = np.where(good, values, np.nan)
    shown = np.where(values == 0, vmin / 10, shown)
    x_edges = _edges(steps)
    y_edges = np.arange(n_layers + 1) - 0.5
    mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(shown), cmap=cmap,
                         norm=LogNorm(vmin=vmin, vmax=vmax), shading="flat", rasterized=True)
    if bad.any():
        overlay = np.ma.masked_where(~bad, np.ones_like(values))
        ax.pcolormesh(x_edges, y_edges, overlay, cmap=ListedColormap([style.VERMILLION]), shading="flat",
                      rasterized=True)
        if bad.sum() <= MARK_MAX:
            r, c = np.nonzero(bad)
            centres = (x_edges[:-1] + x_edges[1:]) / 2
            ax.scatter(centres[c], r, marker="x", s=12 if bad.sum() > 200 else 24, color=style.BLACK, lw=0.8)
    cb = fig.colorbar(mesh, ax=ax, extend="min" if (values == 0).any() else "neither", pad=0.01, fraction=0.05,
                      aspect=30)
    cb.set_label(f"{_pretty(metric)} (log scale)", fontsize=9)

    shown_names = [names[i] for i in idx]
    found = source.findings_frame(src, findings)
    flagged = [shown_names.index(str(layer)) for layer in found.get("layer", [])
               if str(layer) in shown_names] if len(found) else []
    style.label_layers(ax, shown_names, axis="y", max_labels=max_labels, highlight=flagged)
    ax.invert_yaxis()  # input at the top, output at the bottom: reads like the model summary
    style.integer_axis(ax.xaxis)
    ax.set_xlabel("training step", fontsize=9)
    ax.set_ylabel("layer (model order)", fontsize=9)
    if bad.any():
        first = int(np.nonzero(bad.any(axis=0))[0][0])
        where = [shown_names[r] for r in np.nonzero(bad[:, first])[0]]
        title += f" — first NaN/Inf at step {steps[first]} in {style.short_name(where[0], 30)!r}"
        if len(where) > 1:
            title += f" and {len(where) - 1} more"
    ax.set_title(title, fontsize=10, color=style.VERMILLION if bad.any() else style.BLACK)
    _legend(ax, bad.any(), (values == 0).any(), (~np.isfinite(values) & ~bad).any())
    return fig


def _pretty(metric: str) -> str:
    return {"grad_norm": "gradient norm", "act_norm": "activation norm", "act_std": "activation std",
            "param_grad_norm": "weight-gradient norm", "update_ratio": "update/weight ratio"}.get(
        metric, metric.replace("_", " "))


def _cmap():
    import matplotlib

    return matplotlib.colormaps[style.SEQUENTIAL_CMAP]


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges halfway between recorded steps (history thins old steps unevenly)."""
    s = steps.astype(np.float64)
    if s.size == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[:-1] + s[1:]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def _nonfinite(src, metric: str, given, hist: pd.DataFrame, idx: list[int]) -> np.ndarray:
    shape = (len(idx), len(hist))
    frame = given
    if frame is None and source.is_watcher(src) and metric.startswith(("grad_", "act_")):
        prefix = metric.split("_", 1)[0]
        try:
            parts = [src.history(f"{prefix}_{k}") for k in ("nan", "posinf", "neginf")]
            frame = parts[0].fillna(0) + parts[1].fillna(0) + parts[2].fillna(0)
        except Exception:
            frame = None
    if frame is None:
        return np.zeros(shape, dtype=bool)
    frame = frame.reindex(index=hist.index, columns=hist.columns)
    counts = frame.to_numpy(dtype=np.float64)[:, idx].T
    return np.nan_to_num(counts) > 0


def _legend(ax, bad: bool, zero: bool, missing: bool) -> None:
    from matplotlib.patches import Patch

    handles = []
    if bad:
        handles.append(Patch(facecolor=style.VERMILLION, label="NaN/Inf"))
    if zero:
        handles.append(Patch(facecolor=style.BLACK, label="exactly 0"))
    if missing:
        handles.append(Patch(facecolor="#eeeeee", edgecolor="#bbbbbb", label="not recorded"))
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.12), ncol=3,
                  frameon=False)
