"""Gradient flow: per-layer gradient norm and activation scale in model order.

The first picture to look at. On a log axis, a vanishing gradient is a slope down
toward the input, an exploding one a slope up, and a dead layer a hole. Layers the
detectors flagged are banded in the severity colour and their names are bold; NaN/Inf
and exact zeros, which a log axis cannot show, are drawn as labelled markers on the
top and bottom edges.
"""

from __future__ import annotations

import numpy as np

from ..detectors.finding import SEVERITY_RANK
from . import source, style

SERIES = (
    # column, label, colour, marker, line style
    ("grad_norm", "gradient norm (w.r.t. output)", style.BLUE, "o", "-"),
    ("param_grad_norm", "weight-gradient norm", style.GREEN, "^", ""),
    ("act_std", "activation std", style.ORANGE, "s", "--"),
)


def gradient_flow(src, *, ax=None, findings=None, leaves_only: bool = True, selected: str | None = None,
                  max_labels: int = 60):
    """Plot the latest step's per-layer gradient norms and activation std, flagged layers marked.

    ``src`` is a Watcher or the DataFrame of ``w.layers()``; ``findings`` defaults to the
    watcher's. ``leaves_only`` hides container modules (they repeat a child's output).
    ``selected`` names a layer to mark. Returns the matplotlib Figure.
    """
    df = source.layers_frame(src)
    found = source.findings_frame(src, findings)
    names = [str(n) for n in df["layer"]] if "layer" in df.columns else []
    idx = source.leaf_layers(names) if leaves_only else list(range(len(names)))
    n = len(idx)
    fig, ax = style.figure_and_axes(ax, width=max(9.0, min(20.0, 5.0 + 0.2 * n)), height=4.6)
    step = _step_of(df)
    data = {col: source.column(df, col)[idx] for col, *_ in SERIES}
    gnf = source.nonfinite_counts(df, "grad")[idx]
    anf = source.nonfinite_counts(df, "act")[idx]
    plotted = np.concatenate([v for v in data.values()])
    if n == 0 or step < 0 or not (np.isfinite(plotted).any() or gnf.any() or anf.any()):
        style.no_data(ax, title="Gradient flow")
        return fig

    shown = [names[i] for i in idx]
    x = np.arange(n, dtype=float)
    flagged = _flags(found, shown)
    for pos, (sev, kinds) in flagged.items():
        ax.axvspan(pos - 0.5, pos + 0.5, color=style.SEVERITY_COLOR.get(sev, style.GREY), alpha=0.18, lw=0,
                   zorder=0)
        if n <= 40:
            ax.text(pos, 0.985, ", ".join(kinds), transform=ax.get_xaxis_transform(), rotation=90, ha="center",
                    va="top", fontsize=7, color=style.SEVERITY_COLOR.get(sev, style.BLACK), zorder=5)

    ax.set_yscale("log")
    for col, label, color, marker, ls in SERIES:
        y = data[col]
        ok = style.finite_positive(y)
        if not ok.any():
            continue
        yy = np.where(ok, y, np.nan)
        ax.plot(x, yy, ls=ls or "none", marker=marker, ms=4 if n > 60 else 5, lw=1.4, color=color, label=label,
                zorder=3)
    ghost = None
    if not style.finite_positive(data["grad_norm"]).any():
        ghost = _last_finite(src, names, idx)
        if ghost is not None:
            g_step, g_grad, g_act = ghost
            ax.plot(x, np.where(style.finite_positive(g_grad), g_grad, np.nan), ls=":", marker="o", ms=4,
                    color=style.GREY, label=f"gradient norm at step {g_step} (last finite)", zorder=2)
            ax.plot(x, np.where(style.finite_positive(g_act), g_act, np.nan), ls=":", marker="s", ms=4,
                    color="#c8c8c8", label=f"activation std at step {g_step}", zorder=2)
    limits = style.log_limits(np.concatenate([data[c] for c, *_ in SERIES]
                                             + ([ghost[1], ghost[2]] if ghost else [])))
    if limits:
        ax.set_ylim(*limits)

    edge = ax.get_xaxis_transform()
    bad = (gnf > 0) | ((~np.isfinite(data["grad_norm"])) & ~np.isnan(data["grad_norm"]))
    bad_act = anf > 0
    if bad.any() or bad_act.any():
        both = bad | bad_act
        ax.scatter(x[both], np.full(both.sum(), 0.965), transform=edge, marker="X", s=70, color=style.VERMILLION,
                   zorder=6, clip_on=False, label="NaN/Inf in gradient or activation")
    for col, label, color, y in (("grad_norm", "gradient exactly 0", style.BLACK, 0.03),
                                 ("act_std", "activation constant (std 0)", style.ORANGE, 0.085)):
        zero = data[col] == 0
        if zero.any():
            ax.scatter(x[zero], np.full(zero.sum(), y), transform=edge, marker="v", s=50, color=color,
                       edgecolors=style.BLACK, linewidths=0.5, zorder=6, clip_on=False, label=label)

    if selected is not None and selected in shown:
        ax.axvline(shown.index(selected), color=style.BLACK, ls=":", lw=1.2, zorder=1)

    ax.set_xlim(-0.6, n - 0.4)
    style.label_layers(ax, shown, axis="x", max_labels=max_labels, highlight=list(flagged))
    ax.set_xlabel(f"layer, in model order (input → output){' — containers hidden' if leaves_only else ''}",
                  fontsize=9)
    ax.set_ylabel("norm / std (log scale)", fontsize=9)
    ax.grid(axis="y", which="major", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    title = _title(step, data["grad_norm"], flagged, found)
    if not style.finite_positive(data["grad_norm"]).any():
        title += f"\nno finite gradient norm at step {step}" + (
            f"; step {ghost[0]}, the last finite one, in grey" if ghost else "")
    ax.set_title(title, fontsize=10, loc="left",
                 color=style.VERMILLION if (bad.any() or bad_act.any()) else style.BLACK)
    handles, labels = ax.get_legend_handles_labels()
    if flagged:
        from matplotlib.patches import Patch

        for sev in ("error", "warning", "info"):
            if any(s == sev for s, _ in flagged.values()):
                handles.append(Patch(color=style.SEVERITY_COLOR[sev], alpha=0.3))
                labels.append(f"flagged ({sev})")
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False,
              borderaxespad=0.0)
    return fig


def _last_finite(src, names: list[str], idx: list[int]):
    """(step, grad norms, activation std) of the last recorded step with a finite gradient norm."""
    if not source.is_watcher(src):
        return None
    try:
        g = src.history("grad_norm")
        a = src.history("act_std")
    except Exception:
        return None
    cols = [names[i] for i in idx]
    gv = g.reindex(columns=cols).to_numpy(dtype=np.float64)
    ok = style.finite_positive(gv).any(axis=1)
    if not ok.any():
        return None
    r = int(np.nonzero(ok)[0][-1])
    av = a.reindex(index=g.index[[r]], columns=cols).to_numpy(dtype=np.float64)[0]
    return int(g.index[r]), gv[r], av


def _step_of(df) -> int:
    if "step" in df.columns and len(df):
        s = source.column(df, "step")
        if np.isfinite(s).any():
            return int(np.nanmax(s))
    return -1


def _flags(found, shown: list[str]) -> dict[int, tuple[str, list[str]]]:
    """Position -> (worst severity, kinds) for flagged layers that are on the plot."""
    out: dict[int, tuple[str, list[str]]] = {}
    if found is None or len(found) == 0 or "layer" not in found.columns:
        return out
    pos = {name: i for i, name in enumerate(shown)}
    for row in found.itertuples(index=False):
        layer = str(getattr(row, "layer", ""))
        if layer not in pos:
            continue
        sev = str(getattr(row, "severity", "warning"))
        kind = str(getattr(row, "kind", ""))
        i = pos[layer]
        old_sev, kinds = out.get(i, (sev, []))
        if SEVERITY_RANK.get(sev, 3) < SEVERITY_RANK.get(old_sev, 3):
            old_sev = sev
        if kind and kind not in kinds:
            kinds.append(kind)
        out[i] = (old_sev, kinds)
    return out


def _title(step: int, grad: np.ndarray, flagged: dict, found) -> str:
    ok = style.finite_positive(grad)
    parts = [f"Gradient flow at step {step}"]
    if ok.sum() >= 2:
        decades = np.log10(grad[ok].max() / grad[ok].min())
        parts.append(f"gradient norms span {decades:.1f} decades")
    if flagged:
        parts.append(f"{len(flagged)} flagged layer(s)")
    elif found is not None and len(found) == 0:
        parts.append("no findings")
    return " — ".join(parts)
