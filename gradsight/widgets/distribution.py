"""How one layer's gradient (or activation) distribution moves over training steps.

A steps × values heatmap: each row is one recorded histogram, regridded onto a
common signed-log value axis, coloured by the fraction of that step's values in each
cell (log colour scale, so tails stay visible). Zeros and the NaN/+Inf/-Inf counts
have columns of their own at the edges, outlined in vermillion when not empty, and the
title names the first step with a non-finite value.
"""

from __future__ import annotations

import numpy as np

from . import signed_log, style
from .histogram import OF_LABEL


def distribution(src, layer: str | None = None, *, of: str = "grad", ax=None, selected_step: int | None = None,
                 cells: int = 40):
    """Plot every recorded histogram of ``layer`` over steps.

    ``src`` is a Watcher (with ``layer``) or a sequence of :class:`~gradsight.Histogram`
    of one layer. ``selected_step`` is marked (the dashboard's slider). Returns the Figure.
    """
    hists = _histograms(src, layer, of)
    what = OF_LABEL.get(of, of)
    name = layer if layer is not None else (hists[0].layer if hists else "")
    fig, ax = style.figure_and_axes(ax, width=7.5, height=4.2)
    title = f"{what} distribution of {style.short_name(name, 40)} over steps"
    if not hists:
        style.no_data(ax, f"no {what} histograms of {name!r} yet: run a training step\n"
                          "(histograms are taken every histogram_every steps)", title=title)
        return fig
    from matplotlib.colors import LogNorm

    axis = signed_log.common_axis(hists, cells=cells)
    steps = np.array([h.step for h in hists], dtype=np.float64)
    rows = np.array([signed_log.regrid(h, axis) for h in hists])
    special = np.array([[signed_log.specials(h)[s] for s in signed_log.SPECIALS] for h in hists], dtype=float)
    totals = np.array([max(h.total, 1) for h in hists], dtype=np.float64)
    frac = rows / totals[:, None]
    frac_special = special / totals[:, None]
    y_edges = _edges(steps)
    positive = np.concatenate([frac[frac > 0], frac_special[frac_special > 0]])
    vmin = min(max(float(positive.min()) if positive.size else 1e-4, 1e-6), 1e-3)
    norm = LogNorm(vmin=vmin, vmax=1.0)
    import matplotlib

    cmap = matplotlib.colormaps[style.SEQUENTIAL_CMAP].with_extremes(bad="white", under="white")
    mesh = ax.pcolormesh(axis.cell_edges(), y_edges, np.ma.masked_less_equal(frac, 0), cmap=cmap, norm=norm,
                         shading="flat", rasterized=True)
    from matplotlib.patches import Rectangle

    for k, s in enumerate(signed_log.SPECIALS):
        a, b = axis.special_position(s)
        ax.pcolormesh([a, b], y_edges, np.ma.masked_less_equal(frac_special[:, k:k + 1], 0), cmap=cmap,
                      norm=norm, shading="flat", rasterized=True)
        hit = special[:, k] > 0
        ax.add_patch(Rectangle((a, y_edges[0]), b - a, y_edges[-1] - y_edges[0], fill=False,
                               edgecolor=style.VERMILLION if hit.any() else "#cccccc",
                               lw=1.5 if hit.any() else 0.8))
        if hit.any() and len(hists) <= 25:
            for j in np.nonzero(hit)[0]:
                ax.text((a + b) / 2, (y_edges[j] + y_edges[j + 1]) / 2, _compact(special[j, k]), ha="center",
                        va="center", fontsize=7, color="white" if frac_special[j, k] > 0.3 else style.BLACK)
    cb = fig.colorbar(mesh, ax=ax, pad=0.01)
    cb.set_label("fraction of the step's values (log)", fontsize=9)
    ticks, labels = axis.ticks(signed_log.per_side(ax))
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=8)
    for lab in ax.get_xticklabels()[-3:]:
        lab.set_color(style.VERMILLION)
    ax.set_xlim(*axis.limits())
    ax.set_ylim(y_edges[0], y_edges[-1])
    if selected_step is not None and len(hists) > 1:
        ax.axhline(selected_step, color=style.ORANGE, lw=1.6, ls="--")
    ax.set_xlabel(f"{what} value (signed log scale)", fontsize=9)
    ax.set_ylabel("training step", fontsize=9)
    style.integer_axis(ax.yaxis)
    first_bad = next((h.step for h in hists if h.nan + h.posinf + h.neginf), None)
    ax.set_title(title + (f" — first NaN/Inf at step {first_bad}" if first_bad is not None else
                          f" ({len(hists)} histograms, no NaN/Inf)"), fontsize=10,
                 color=style.VERMILLION if first_bad is not None else style.BLACK)
    return fig


def _histograms(src, layer, of) -> list:
    if src is None:
        return []
    if hasattr(src, "histogram_steps"):
        if layer is None:
            raise ValueError("gradsight: distribution(w, layer) needs a layer name (see w.layer_names).")
        return [src.histogram(layer, of=of, step=s) for s in src.histogram_steps(layer, of)]
    hists = list(src)
    if any(not hasattr(h, "counts") for h in hists):
        raise TypeError("gradsight: distribution() takes a Watcher or a list of Histogram objects.")
    return sorted(hists, key=lambda h: h.step)


def _edges(steps: np.ndarray) -> np.ndarray:
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mid = (steps[:-1] + steps[1:]) / 2
    return np.concatenate([[steps[0] - (mid[0] - steps[0])], mid, [steps[-1] + (steps[-1] - mid[-1])]])


def _compact(n: float) -> str:
    n = int(n)
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else str(n)
