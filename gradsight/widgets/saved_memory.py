"""Memory held for backward, per layer: where activation memory goes.

Out-of-memory in backward is the most common way a large run dies; this is the picture
that says which layers to checkpoint, shrink or run in lower precision. One horizontal
bar per layer (the ``top`` largest, in model order), the bytes its forward saved for
backward on the latest detail step; the title gives the step's total. Bytes are counted
once per storage and parameters are left out (they are held anyway).
"""

from __future__ import annotations

import numpy as np

from . import source, style


def saved_memory(src, *, ax=None, top: int = 25):
    """Bar chart of ``w.layers()["saved_bytes"]`` from a Watcher or that DataFrame."""
    df = source.layers_frame(src)
    fig, ax = style.figure_and_axes(ax, 7.5, 1.4 + 0.22 * min(top, max(1, len(df))))
    saved = source.column(df, "saved_bytes")
    names = [str(n) for n in df["layer"]] if "layer" in df.columns else [str(i) for i in range(len(df))]
    types = [str(t) for t in df["type"]] if "type" in df.columns else [""] * len(df)
    step = None
    if source.is_watcher(src):  # the step it was measured at (a detail step), not the latest step
        hist = src.history("saved_bytes")
        measured = np.flatnonzero(np.isfinite(hist.to_numpy(dtype=np.float64)).any(axis=1))
        if len(measured):
            step = int(hist.index[measured[-1]])
    has = np.flatnonzero(np.isfinite(saved) & (saved > 0))
    if not len(has):
        why = style.NO_DATA if not np.isfinite(saved).any() else "no layer saved tensors for backward"
        style.no_data(ax, why + "\n(measured on histogram steps)", title="Memory saved for backward")
        return fig
    keep = np.sort(has[np.argsort(-saved[has], kind="stable")[:top]])  # the largest, shown in model order
    values = saved[keep]
    unit, scale = _unit(values.max())
    y = np.arange(len(keep))[::-1]
    ax.barh(y, values / scale, color=style.BLUE, height=0.7)
    labels = [f"{style.short_name(names[i] or style.ROOT_LABEL, 36)} ({types[i]})" for i in keep]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel(f"saved for backward ({unit})", fontsize=9)
    ax.grid(axis="x", color="#e5e5e5", lw=0.6)
    total = float(np.nansum(saved))
    more = f", {len(has) - len(keep)} smaller layers not shown" if len(has) > len(keep) else ""
    t_unit, t_scale = _unit(total)
    where = f" at step {step}" if step is not None and step >= 0 else ""
    ax.set_title(f"Memory saved for backward{where}: {total / t_scale:.3g} {t_unit} in all{more}", fontsize=10)
    return fig


def _unit(x: float) -> tuple[str, float]:
    for unit, scale in (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if x >= scale:
            return unit, scale
    return "bytes", 1.0
