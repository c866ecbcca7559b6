"""Dead units of a ReLU-family layer: which output features never fire over a window of steps.

The capture keeps, per step, each unit's largest output over the batch, and the run's
history keeps the last steps of it: ``src.unit_history(layer)`` — the one source for a
Watcher, a Recording and the dashboard alike. :func:`dead_units` draws steps × units with
silent cells in black, and marks units that never produced a positive value in the whole
window — the dead ones — in vermillion. :class:`UnitActivity` holds such windows for
several layers (read from a source, or fed step records by hand).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from . import style

DEFAULT_WINDOW = 50


class UnitActivity:
    """Per-unit max output of every ReLU-family layer over the last ``window`` recorded steps."""

    def __init__(self, layers=(), window: int = DEFAULT_WINDOW):
        self.layers = tuple(layers)
        self.window = int(window)
        self._rows: dict[int, deque] = {}

    @classmethod
    def from_watcher(cls, watcher, window: int = DEFAULT_WINDOW) -> UnitActivity:
        """The last ``window`` steps of every layer's ``unit_history`` (a Watcher or a Recording)."""
        act = cls(watcher.layer_names, window)
        for i, name in enumerate(act.layers):
            steps, m = unit_matrix(watcher, name)
            if len(steps):
                last = slice(-act.window, None)
                act._rows[i] = deque(zip(steps[last].tolist(), m[last].astype(np.float32), strict=True),
                                     maxlen=act.window)
        return act

    def add(self, record) -> None:
        """Take one StepRecord's ``units`` (a copy, float32: bounded by window × units)."""
        if not self.layers:
            self.layers = tuple(record.layers)
        for i, v in record.units.items():
            rows = self._rows.setdefault(int(i), deque(maxlen=self.window))
            v = np.asarray(v, dtype=np.float32).ravel()
            if rows and rows[-1][1].shape != v.shape:
                rows.clear()  # the layer changed width (a re-built model): start over
            if rows and rows[-1][0] == record.step:
                rows.pop()
            rows.append((int(record.step), v.copy()))

    def layer_names(self) -> list[str]:
        """Layers with unit activity, in model order."""
        return [self.layers[i] if i < len(self.layers) else str(i) for i in sorted(self._rows)]

    def matrix(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, steps × units array of per-unit max output) for ``layer``."""
        i = self.layers.index(layer) if layer in self.layers else None
        rows = self._rows.get(i) if i is not None else None
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return np.array([s for s, _ in rows]), np.stack([v for _, v in rows])

    def dead_fraction(self, layer: str) -> float:
        """Fraction of units with no positive (and no NaN) output in the whole window."""
        _, m = self.matrix(layer)
        if not m.size:
            return float("nan")
        return float((~(m > 0).any(axis=0) & ~np.isnan(m).any(axis=0)).mean())


def unit_matrix(src, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, steps × units) of ``layer`` from a source's ``unit_history``; empty when the layer
    has no unit activity. An unknown layer name raises the source's own helpful error."""
    if layer not in src.layer_names:
        src.unit_history(layer)  # raises: no such layer (with close matches)
    try:
        df = src.unit_history(layer)
    except ValueError:  # not a ReLU-family layer, or no step yet: the figure's empty state
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return df.index.to_numpy(dtype=np.int64), df.to_numpy()


def dead_units(src, layer: str | None = None, *, ax=None, steps=None, window: int | None = None):
    """Plot per-unit activity of ``layer`` over the window.

    ``src`` is a Watcher or a Recording (its ``unit_history``: the last steps it keeps, or
    the last ``window`` of them), a :class:`UnitActivity`, or a steps × units array of
    per-unit max outputs (with ``steps`` optional). Returns the Figure.
    """
    steps_arr, m, name = _resolve(src, layer, steps)
    if window is not None and len(steps_arr) > window:
        steps_arr, m = steps_arr[-window:], m[-window:]
    fig, ax = style.figure_and_axes(ax, width=8.0, height=3.8)
    title = f"Unit activity of {style.short_name(name, 40)}"
    if m.size == 0:
        kind = _layer_type(src, name)
        ran = getattr(src, "step_count", 0) > 0 or isinstance(src, UnitActivity) and src.layer_names()
        msg = (f"no unit activity for {name!r}{f' ({kind})' if kind else ''}: it is recorded for\n"
               "ReLU-family layers (ReLU, LeakyReLU, GELU, ...) only" if ran else
               "no unit activity yet: run a training step\n"
               "(recorded for ReLU-family layers: ReLU, LeakyReLU, GELU, ...)")
        style.no_data(ax, msg, title=title)
        return fig
    import matplotlib
    from matplotlib.colors import Normalize

    m = m.astype(np.float64)
    active = m > 0
    broken = np.isnan(m).any(axis=0)  # NaN is not silence: drawn apart (vermillion), not counted dead
    dead = ~active.any(axis=0) & ~broken
    n_steps, n_units = m.shape
    finite_pos = np.where(np.isfinite(m) & active, m, np.nan)
    vmax = float(np.nanmax(finite_pos)) if np.isfinite(finite_pos).any() else 1.0
    from matplotlib.colors import ListedColormap

    # cividis without its darkest third: a weakly firing unit never looks like a silent (black) one
    cmap = ListedColormap(matplotlib.colormaps["cividis"](np.linspace(0.35, 1.0, 256))).with_extremes(
        under=style.BLACK, bad=style.VERMILLION)
    shown = np.where(active, m, -1.0)
    shown = np.where(np.isnan(m), np.nan, shown)
    y_edges = np.arange(n_steps + 1) - 0.5
    mesh = ax.pcolormesh(np.arange(n_units + 1) - 0.5, y_edges, np.ma.masked_invalid(shown), cmap=cmap,
                         norm=Normalize(vmin=1e-12, vmax=max(vmax, 1e-12)), shading="flat", rasterized=True)
    cb = fig.colorbar(mesh, ax=ax, extend="min", pad=0.01)
    cb.set_label("largest output over the batch\n(black: no positive output)", fontsize=8)
    if dead.any():
        x = np.nonzero(dead)[0]
        ax.scatter(x, np.full(x.size, 1.0), transform=ax.get_xaxis_transform(), marker="v",
                   s=max(8, min(50, 2500 / n_units)), color=style.VERMILLION, clip_on=False, zorder=5)
    ax.set_xlim(-0.5, n_units - 0.5)
    ax.set_ylim(-0.5, n_steps - 0.5)
    ax.set_xlabel(f"unit (output feature or channel), {n_units} in all"
                  + ("  —  ▼ dead: never positive in the window" if dead.any() else ""), fontsize=9)
    ticks = np.linspace(0, n_steps - 1, min(n_steps, 6)).round().astype(int)
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(steps_arr[t]) for t in ticks], fontsize=8)
    ax.set_ylabel("training step", fontsize=9)
    window = f"the last {n_steps} step{'s' if n_steps != 1 else ''}"
    nan_note = f"\n{int(broken.sum())} unit(s) with NaN output (vermillion)" if broken.any() else ""
    ax.set_title(f"{title}\n{int(dead.sum())} of {n_units} units dead ({dead.mean():.0%}) in {window}{nan_note}",
                 fontsize=10, loc="left", pad=10, color=style.VERMILLION if dead.mean() >= 0.5 else style.BLACK)
    return fig


def _layer_type(src, name: str) -> str:
    try:
        df = src.layers()
        return str(df.loc[df["layer"] == name, "type"].iloc[0])
    except Exception:
        return ""


def _resolve(src, layer, steps):
    if isinstance(src, UnitActivity):
        names = src.layer_names()
        layer = layer if layer is not None else (names[0] if names else "")
        s, m = src.matrix(layer)
        return s, m, layer
    if hasattr(src, "unit_history") and hasattr(src, "layer_names"):
        if layer is None:
            layer = next((n for n in src.layer_names if len(unit_matrix(src, n)[0])), "")
            if not layer:
                return np.zeros(0, dtype=np.int64), np.zeros((0, 0)), ""
        s, m = unit_matrix(src, layer)
        return s, m, layer
    if src is None:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0)), layer or ""
    m = np.asarray(src, dtype=np.float64)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2:
        raise ValueError(f"gradsight: dead_units() takes a steps × units array; got shape {m.shape}.")
    s = np.arange(m.shape[0]) if steps is None else np.asarray(steps)
    return s, m, layer or "layer"
