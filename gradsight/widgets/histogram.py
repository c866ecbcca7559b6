"""One histogram (a layer's gradient, activation or weight at one step) on a signed-log axis.

Bars for negative and positive magnitudes, a grey bar for exact zeros, and vermillion
bars for -Inf, +Inf and NaN with their counts written on them: a non-finite value is
never dropped from the picture.
"""

from __future__ import annotations

import numpy as np

from ..records.histogram import SAMPLE
from . import signed_log, style

OF_LABEL = {"grad": "gradient", "activation": "activation", "weight": "weight"}


def histogram(src, layer: str | None = None, *, of: str = "grad", step: int | None = None, ax=None, axis=None):
    """Plot one :class:`~gradsight.Histogram`, or ``w.histogram(layer, of, step)`` of a Watcher.

    ``axis`` (a :class:`signed_log.Axis`) fixes the value axis, e.g. to keep it steady
    while a slider moves through steps. Returns the matplotlib Figure.
    """
    fig, ax = style.figure_and_axes(ax, width=7.5, height=3.6)
    h = _resolve(src, layer, of, step)
    what = OF_LABEL.get(of if h is None else h.of, of)
    if h is None:
        style.no_data(ax, f"no {what} histogram of {layer!r} yet: run a training step\n"
                          "(histograms are taken every histogram_every steps)",
                      title=f"{what} histogram of {style.short_name(layer or '')}")
        return fig
    axis = axis or signed_log.common_axis([h])
    counts = signed_log.regrid(h, axis)
    edges = axis.cell_edges()
    left, width = edges[:-1], np.diff(edges)
    zero_cell = axis.cells
    colors = [style.GREY if i == zero_cell else style.BLUE for i in range(len(counts))]
    ax.bar(left, counts, width=width, align="edge", color=colors, lw=0)
    sp = signed_log.specials(h)
    top = max(float(counts.max(initial=0)), max(sp.values()), 1)
    for name, c in sp.items():
        a, b = axis.special_position(name)
        ax.bar(a, c, width=b - a, align="edge", color=style.VERMILLION, lw=0)
        if c:
            ax.text((a + b) / 2, c, f"{c:,}", ha="center", va="bottom", fontsize=8, color=style.VERMILLION)
    positive = counts[counts > 0]
    if positive.size and top / max(positive.min(), 1) > 100:
        ax.set_yscale("log")
        ax.set_ylim(0.7, top * 3)
    else:
        ax.set_ylim(0, top * 1.15)
    ticks, labels = axis.ticks(signed_log.per_side(ax))
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=8, rotation=0)
    for lab in ax.get_xticklabels()[-3:]:
        lab.set_color(style.VERMILLION)
    ax.set_xlim(*axis.limits())
    ax.set_xlabel(f"{what} value (signed log scale; zeros and non-finite values in their own columns)",
                  fontsize=9)
    ax.set_ylabel("count" + (" (log scale)" if ax.get_yscale() == "log" else ""), fontsize=9)
    ax.set_title(_title(h, what), fontsize=10)
    ax.grid(axis="y", color="#e5e5e5", lw=0.6)
    ax.set_axisbelow(True)
    return fig


def _resolve(src, layer, of, step):
    if hasattr(src, "counts") and hasattr(src, "edges"):
        return src
    if src is None:
        return None
    if not hasattr(src, "histogram_steps"):
        raise TypeError(f"gradsight: expected a Histogram or a Watcher; got {type(src).__name__}.")
    if layer is None:
        raise ValueError("gradsight: histogram(w, layer) needs a layer name (see w.layer_names).")
    available = src.histogram_steps(layer, of)
    if not available:
        return None
    if step is not None and step not in available:
        step = min(available, key=lambda s: abs(s - step))
    return src.histogram(layer, of=of, step=step)


def _title(h, what: str) -> str:
    total = h.total
    nonfinite = h.nan + h.posinf + h.neginf
    parts = [f"{what} of {style.short_name(h.layer, 40)} at step {h.step}: {total:,} values"]
    if total:
        parts.append(f"{h.zero / total:.0%} zeros")
    if nonfinite:
        parts.append(f"{h.nan:,} NaN, {h.posinf + h.neginf:,} Inf")
    if h.subnormal:
        parts.append(f"{h.subnormal:,} subnormal")
    title = ", ".join(parts)
    if getattr(h, "sampled", 0):  # the bins' shape is estimated; zeros and non-finite counts are exact
        title += f"\nbins estimated from a strided sample of {SAMPLE:,} values per tensor; " \
                 "zero and NaN/Inf counts exact"
    return title
