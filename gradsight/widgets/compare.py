"""Two runs side by side: "what changed between yesterday's run and today's?", layer by layer.

Loss over steps, gradient flow (per-layer gradient norm at each run's last step, on one log
axis), per-layer gradient norm over steps (one heatmap per run on a shared colour scale,
so the same colour means the same norm) and the findings of each run. Either run may be a
Watcher or a Recording: only the public read API is used.
"""

from __future__ import annotations

import numpy as np

from . import source, style

RUN_COLORS = (style.BLUE, style.ORANGE)
MAX_FINDINGS = 8


def compare(a, b, *, labels: tuple[str, str] | None = None, metric: str = "grad_norm"):
    """Compare runs ``a`` and ``b`` (Watchers or Recordings, e.g. ``gs.open("runs/exp1")``).

    ``labels`` name the runs in the legend (default: their names, or "A"/"B" when equal).
    Returns the matplotlib Figure.
    """
    for name, run in (("a", a), ("b", b)):
        if not source.is_watcher(run):
            raise TypeError(f"gradsight.widgets.compare: {name} must be a Watcher or a Recording "
                            f"(gs.open(path)); got {type(run).__name__}.")
    labels = labels or _labels(a, b)
    fig = style.new_figure(13.0, 10.0)
    grid = fig.add_gridspec(3, 2, height_ratios=[1.0, 1.25, 0.5])
    _loss(fig.add_subplot(grid[0, 0]), (a, b), labels)
    _flow(fig.add_subplot(grid[0, 1]), (a, b), labels, metric)
    hist = [r.history(metric) for r in (a, b)]
    values = np.concatenate([h.to_numpy(dtype=np.float64).ravel() for h in hist])
    ok = style.finite_positive(values)
    norm = None
    if ok.any():
        from matplotlib.colors import LogNorm

        lo, hi = float(values[ok].min()), float(values[ok].max())
        norm = LogNorm(vmin=lo if hi > lo else lo / 2, vmax=hi if hi > lo else hi * 2)
    for k, (run, h) in enumerate(zip((a, b), hist, strict=True)):
        _heat(fig, fig.add_subplot(grid[1, k]), run, h, labels[k], RUN_COLORS[k], metric, norm)
    for k, run in enumerate((a, b)):
        _findings(fig.add_subplot(grid[2, k]), run, labels[k], RUN_COLORS[k])
    fig.suptitle(f"{labels[0]}  vs  {labels[1]}", fontsize=12)
    return fig


def _labels(a, b) -> tuple[str, str]:
    na, nb = str(getattr(a, "name", "A")), str(getattr(b, "name", "B"))
    if na == nb:
        ra, rb = getattr(a, "root", None), getattr(b, "root", None)
        if ra is not None and rb is not None and ra.name != rb.name:
            return ra.name, rb.name
        return f"A: {na}", f"B: {nb}"
    return na, nb


def _loss(ax, runs, labels) -> None:
    drawn = False
    for run, label, color in zip(runs, labels, RUN_COLORS, strict=True):
        st = run.steps()
        y = source.column(st, "loss")
        ok = np.isfinite(y)
        x = source.column(st, "step")
        if ok.any():
            ax.plot(x[ok], y[ok], color=color, lw=1.5, label=label)
            drawn = True
        elif len(y):
            ax.plot([], [], color=color, lw=1.5, label=f"{label}: no finite loss")
        bad = np.isinf(y) | (np.isnan(y) & (np.arange(len(y)) > (np.argmax(ok) if ok.any() else len(y))))
        if bad.any():  # NaN after finite values: the loss diverged there
            ax.scatter(x[bad], np.full(bad.sum(), 0.95), transform=ax.get_xaxis_transform(), marker="X",
                       color=color, edgecolors=style.VERMILLION, s=40, clip_on=False)
    if not drawn:
        style.no_data(ax, "no loss recorded (pass w.step(loss=...))", title="Loss")
        return
    vals = np.concatenate([source.column(r.steps(), "loss") for r in runs])
    vals = vals[style.finite_positive(vals)]
    if vals.size and vals.max() / vals.min() > 100:
        ax.set_yscale("log")
    ax.set_title("Loss", fontsize=10, loc="left")
    ax.set_xlabel("training step", fontsize=9)
    style.integer_axis(ax.xaxis)
    ax.grid(color="#e5e5e5", lw=0.6)
    ax.legend(fontsize=8, frameon=False)


def _flow(ax, runs, labels, metric: str) -> None:
    frames = [r.layers() for r in runs]
    order: list[str] = []
    for df in frames:
        names = [str(n) for n in df["layer"]]
        order += [names[i] for i in source.leaf_layers(names) if names[i] not in order]
    if not order or all(int(df["step"].iloc[0]) < 0 for df in frames if len(df)):
        style.no_data(ax, title="Gradient flow")
        return
    x = np.arange(len(order), dtype=float)
    ax.set_yscale("log")
    all_values = []
    for df, label, color, marker in zip(frames, labels, RUN_COLORS, ("o", "s"), strict=True):
        values = dict(zip((str(n) for n in df["layer"]), source.column(df, metric), strict=True))
        y = np.array([values.get(n, np.nan) for n in order])
        all_values.append(y)
        ok = style.finite_positive(y)
        step = int(df["step"].iloc[0]) if len(df) else -1
        ax.plot(x, np.where(ok, y, np.nan), marker=marker, ms=4, lw=1.3, color=color,
                label=f"{label} (step {step})")
        counts = dict(zip((str(n) for n in df["layer"]), source.nonfinite_counts(df, "grad"), strict=True))
        bad = (np.array([counts.get(n, 0.0) for n in order]) > 0) | np.isinf(y)
        if bad.any():
            ax.scatter(x[bad], np.full(bad.sum(), 0.965), transform=ax.get_xaxis_transform(), marker="X", s=60,
                       color=style.VERMILLION, edgecolors=color, clip_on=False, label=f"{label}: NaN/Inf")
    limits = style.log_limits(np.concatenate(all_values))
    if limits:
        ax.set_ylim(*limits)
    ax.set_xlim(-0.6, len(order) - 0.4)
    style.label_layers(ax, order, axis="x", max_labels=40)
    ax.set_title(f"Gradient flow: {metric.replace('_', ' ')} per layer, last step", fontsize=10, loc="left")
    ax.set_ylabel("log scale", fontsize=9)
    ax.grid(axis="y", color="#dddddd", lw=0.6)
    ax.legend(fontsize=8, frameon=False)


def _heat(fig, ax, run, hist, label: str, color: str, metric: str, norm) -> None:
    names = [str(c) for c in hist.columns]
    idx = source.leaf_layers(names)
    title = f"{label}: {metric.replace('_', ' ')} per layer over steps"
    if hist.empty or norm is None:
        style.no_data(ax, title=title)
        return
    import matplotlib

    values = hist.to_numpy(dtype=np.float64)[:, idx].T
    steps = np.asarray(hist.index, dtype=np.float64)
    mid = (steps[:-1] + steps[1:]) / 2 if steps.size > 1 else np.array([])
    x = np.concatenate([[steps[0] - 0.5], mid, [steps[-1] + 0.5]]) if steps.size > 1 else \
        np.array([steps[0] - 0.5, steps[0] + 0.5])
    from matplotlib.colors import ListedColormap

    from .heatmap import _nonfinite

    cmap = matplotlib.colormaps[style.SEQUENTIAL_CMAP].with_extremes(bad="#eeeeee", under=style.BLACK)
    shown = np.where(style.finite_positive(values), values, np.nan)
    shown = np.where(values == 0, norm.vmin / 10, shown)
    y = np.arange(len(idx) + 1) - 0.5
    mesh = ax.pcolormesh(x, y, np.ma.masked_invalid(shown), cmap=cmap, norm=norm, shading="flat", rasterized=True)
    nonfinite = _nonfinite(run, metric, None, hist, idx) | np.isinf(values)
    if nonfinite.any():  # NaN/Inf in vermillion; grey cells were not measured
        ax.pcolormesh(x, y, np.ma.masked_where(~nonfinite, np.ones_like(values)),
                      cmap=ListedColormap([style.VERMILLION]), shading="flat", rasterized=True)
        title += " (vermillion: NaN/Inf)"
    fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.05, aspect=30).set_label("log scale", fontsize=8)
    style.label_layers(ax, [names[i] for i in idx], axis="y", max_labels=30)
    ax.invert_yaxis()
    style.integer_axis(ax.xaxis)
    ax.set_xlabel("training step", fontsize=9)
    ax.set_title(title, fontsize=10, loc="left", color=color)


def _findings(ax, run, label: str, color: str) -> None:
    found = source.findings_frame(run)
    ax.set_axis_off()
    ax.set_title(f"{label}: {len(found)} finding(s)", fontsize=10, loc="left", color=color)
    if not len(found):
        ax.text(0.0, 0.85, "nothing wrong detected", transform=ax.transAxes, fontsize=9, color="#555555")
        return
    y = 0.9
    for _, f in found.head(MAX_FINDINGS).iterrows():
        sev = str(f["severity"])
        ax.text(0.0, y, finding_line(f), transform=ax.transAxes, fontsize=8.5, family="monospace",
                color=style.SEVERITY_COLOR.get(sev, style.BLACK))
        y -= 0.11
    if len(found) > MAX_FINDINGS:
        ax.text(0.0, y, f"... {len(found) - MAX_FINDINGS} more", transform=ax.transAxes, fontsize=8, color="#555555")


def finding_line(f) -> str:
    """One finding as a line of the comparison; a job's findings name their rank (two ranks'
    nan_origin at one layer are not duplicates: one produced the NaN, the other inherited it)."""
    where = style.short_name(str(f["layer"]), 26)
    span = f"{f['step']}" if f["step"] == f["last_step"] else f"{f['step']}-{f['last_step']}"
    rank = f.get("rank")
    on = f" [rank {int(rank)}]" if rank is not None and rank == rank else ""
    return f"{str(f['severity']).upper():8} {f['kind']} at {where}, step {span}{on}"
