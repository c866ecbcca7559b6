"""One look for every view: colour-blind-safe colours, readable layer names, empty states.

Colours are Okabe-Ito (distinguishable with every common colour-vision deficiency);
colour maps are viridis/cividis (perceptually uniform, readable in greyscale). Layer
names of deep models (``encoder.layers.11.attention.self.query``) are shortened from
the middle so that both the block and the leaf stay visible, and tick labels are
thinned so that 100+ layers stay legible. matplotlib is imported inside functions:
``import gradsight.widgets`` stays free of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Okabe-Ito
BLUE = "#0072B2"
ORANGE = "#E69F00"
SKY = "#56B4E9"
GREEN = "#009E73"
YELLOW = "#F0E442"
VERMILLION = "#D55E00"
PURPLE = "#CC79A7"
BLACK = "#000000"
GREY = "#999999"
PALETTE = (BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW, BLACK)

PASS_COLOR = BLUE        # gradcheck: within tolerance
FAIL_COLOR = VERMILLION  # told apart from blue with any colour vision
SEVERITY_COLOR = {"error": VERMILLION, "warning": ORANGE, "info": SKY}
SEVERITY_MARKER = {"error": "X", "warning": "v", "info": "o"}
SEQUENTIAL_CMAP = "viridis"
NO_DATA = "no data yet: run a training step"
DPI = 100
ROOT_LABEL = "(model)"


def short_name(name: str, max_len: int = 28) -> str:
    """``encoder.layers.11.attention.self.query`` -> ``e.l.11.attention.self.query``.

    Container names are abbreviated to their first letter from the left, keeping the
    indices (what tells layers apart) and the leaf name; a name still too long keeps its
    tail. The root module (``""``) reads ``(model)``.
    """
    if name == "":
        return ROOT_LABEL
    if len(name) <= max_len:
        return name
    parts = name.split(".")
    for i in range(len(parts) - 1):
        if not parts[i].isdigit():
            parts[i] = parts[i][:1]
            short = ".".join(parts)
            if len(short) <= max_len:
                return short
    short = ".".join(parts)
    return short if len(short) <= max_len else "…" + short[-(max_len - 1):]


def short_names(names: Sequence[str], max_len: int = 28) -> list[str]:
    """Shortened names that stay unique (a clash falls back to the name's own tail)."""
    out = [short_name(n, max_len) for n in names]
    seen: dict[str, int] = {}
    for i, s in enumerate(out):
        if s in seen and names[seen[s]] != names[i]:
            out[i] = "…" + names[i][-(max_len - 1):]
        seen[s] = i
    return out


def label_layers(ax, names: Sequence[str], *, axis: str = "x", max_labels: int = 60,
                 highlight: Sequence[int] = ()) -> None:
    """Put layer names on an axis: shortened, rotated on x, thinned past ``max_labels``.

    Layers in ``highlight`` (flagged ones) always keep their label, in bold.
    """
    n = len(names)
    if n == 0:
        return
    stride = max(1, int(np.ceil(n / max_labels)))
    keep = sorted(set(range(0, n, stride)) | set(int(i) for i in highlight))
    labels = short_names(list(names), 22 if n > 40 else 32)
    size = 8 if n <= 30 else 7 if n <= 80 else 6
    ticks = [float(i) for i in keep]
    texts = [labels[i] for i in keep]
    if axis == "x":
        ax.set_xticks(ticks)
        ax.set_xticklabels(texts, rotation=90 if n > 8 else 30, ha="center" if n > 8 else "right",
                           fontsize=size)
        tick_labels = ax.get_xticklabels()
    else:
        ax.set_yticks(ticks)
        ax.set_yticklabels(texts, fontsize=size)
        tick_labels = ax.get_yticklabels()
    flagged = set(int(i) for i in highlight)
    for idx, lab in zip(keep, tick_labels, strict=False):
        if idx in flagged:
            lab.set_fontweight("bold")
            lab.set_color(VERMILLION)


def integer_axis(axis) -> None:
    """Training steps are whole numbers: no 2.5 on a step axis."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def new_figure(width: float, height: float):
    """A Figure outside pyplot: no global state, shown exactly once in a notebook."""
    from matplotlib.figure import Figure

    _ensure_notebook_display()
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def figure_and_axes(ax, width: float, height: float):
    """The caller's axes (and its figure), or a new figure with one axes."""
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(width, height)
    return fig, fig.add_subplot(1, 1, 1)


def no_data(ax, message: str = NO_DATA, *, title: str | None = None) -> None:
    """An empty state that says what to do, instead of an empty or broken axes."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#cccccc")
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=11,
            color="#555555", wrap=True)
    if title:
        ax.set_title(title, fontsize=11)


def finite_positive(values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return np.isfinite(a) & (a > 0)


def log_limits(values, pad: float = 0.3) -> tuple[float, float] | None:
    """Limits of a log axis around the finite positive values (None when there are none)."""
    a = np.asarray(values, dtype=np.float64)
    a = a[finite_positive(a)]
    if a.size == 0:
        return None
    lo, hi = np.log10(a.min()), np.log10(a.max())
    if hi - lo < 1:
        mid = (hi + lo) / 2
        lo, hi = mid - 0.5, mid + 0.5
    return 10 ** (lo - pad), 10 ** (hi + pad)


def png_bytes(fig) -> bytes:
    """Render a figure to PNG bytes (Agg; one draw, fast compression: for live redraws)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    width, height = canvas.get_width_height(physical=True)
    image = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    buf = io.BytesIO()
    image.save(buf, format="png", compress_level=1)
    return buf.getvalue()


_display_ready = False


def _ensure_notebook_display() -> None:
    """Bare ``Figure`` objects render as PNG in IPython even if pyplot was never imported."""
    global _display_ready
    if _display_ready:
        return
    _display_ready = True
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import print_figure
        from matplotlib.figure import Figure

        ip = get_ipython()
        if ip is None:
            return
        png = ip.display_formatter.formatters["image/png"]
        try:
            png.lookup_by_type(Figure)
            return  # the inline backend (or the user) already renders figures
        except KeyError:
            pass
        png.for_type(Figure, lambda fig: print_figure(fig, "png", bbox_inches="tight"))
    except Exception:  # no IPython, or an unusual shell: figures still work, just not auto-shown
        pass
