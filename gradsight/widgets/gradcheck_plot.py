"""The gradcheck report figure: analytic vs numeric for one tensor, and where its errors are.

What ``report.plot()`` draws (the report imports this view on first use), plus an empty
state for "nothing checked yet" so the dashboard tab never shows a broken axes. The figure
is built with ``matplotlib.figure.Figure`` (not pyplot) so that it is not registered with a
pyplot backend and shows once in a notebook. Colours are style.PASS_COLOR / FAIL_COLOR
(Okabe-Ito blue / vermillion) and failing points also differ in marker, so no colour vision
is needed to read them.
"""

from __future__ import annotations

import numpy as np

from ..gradcheck.errors import GradcheckError
from ..gradcheck.report import GradcheckReport, TensorCheck
from . import style


def gradcheck_figure(report, *, ax=None, tensor: str | None = None):
    """Analytic vs numeric derivatives of the worst tensor, and the error per element.

    ``ax`` may be two axes (scatter, errors). ``report`` None draws the empty state.
    Returns the matplotlib Figure.
    """
    if report is None or not getattr(report, "rows", None):
        fig, a = style.figure_and_axes(ax if ax is None or not isinstance(ax, (list, tuple)) else ax[0],
                                       width=9.0, height=3.6)
        style.no_data(a, "no gradient check yet: choose a layer and press “Check gradient”\n"
                         "(or call w.gradcheck(layer) / gs.gradcheck(fn, *inputs))", title="gradcheck")
        return fig
    if ax is None:
        fig = style.new_figure(11.0, 4.2)
        return report.plot(tensor, fig=fig)
    return report.plot(tensor, ax=ax)


FLOOR = 1e-16  # errors are drawn on a log axis; exact zeros sit on this floor
MARK_MAX = 400  # above this many failing elements the heatmap colour alone shows them


def _pick(report: GradcheckReport, tensor: str | None) -> TensorCheck:
    if tensor is None:
        return report.worst()
    for r in report.rows:
        if r.name == tensor:
            return r
    raise GradcheckError(f"no checked tensor named {tensor!r}; the report has {[r.name for r in report.rows]}.")


def _scatter(ax, report: GradcheckReport, row: TensorCheck) -> None:
    pd_ = row.plot_data
    if pd_ is None:  # fast mode, passing: one projection
        a, n = np.array([row.analytic]), np.array([row.numeric])
        what = "vᵀJu"
    else:
        a, n = pd_.sample_analytic, pd_.sample_numeric
        what = "Jacobian entries"
    bad = ~(np.abs(a - n) <= report.atol + report.rtol * np.abs(n))
    if pd_ is None:
        bad[:] = not row.passed
    lo = float(np.nanmin(np.concatenate([a, n]))) if a.size else -1.0
    hi = float(np.nanmax(np.concatenate([a, n]))) if a.size else 1.0
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", color="0.5", lw=1, label="analytic = numeric")
    ax.scatter(n[~bad], a[~bad], s=12, marker="o", color=style.PASS_COLOR, alpha=0.6, label=f"within tolerance ({int((~bad).sum())})")
    if bad.any():
        ax.scatter(n[bad], a[bad], s=28, marker="x", color=style.FAIL_COLOR, label=f"outside tolerance ({int(bad.sum())})")
    ax.scatter([row.numeric], [row.analytic], s=140, facecolors="none", edgecolors="black", lw=1.2, label="worst entry")
    ax.set_xlabel(f"numeric: central differences, eps={report.eps:g}")
    ax.set_ylabel("analytic: backward")
    ax.set_title(f"{what} ({len(a):,} shown); worst: {row.where()}\n"
                 f"analytic {row.analytic:.4g} vs numeric {row.numeric:.4g}", fontsize=10)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)


def _errors(ax, fig, report: GradcheckReport, row: TensorCheck) -> None:
    pd_ = row.plot_data
    if pd_ is None:
        ax.axis("off")
        ax.text(0.5, 0.5, "fast mode checked a projection only;\nmode='full' shows the error per element",
                ha="center", va="center", fontsize=10, transform=ax.transAxes)
        return
    from matplotlib.ticker import MaxNLocator

    err = np.clip(pd_.element_err, FLOOR, None)
    if pd_.complete and len(row.shape) == 2 and min(row.shape) > 1:
        im = ax.imshow(np.log10(err.reshape(row.shape)), cmap="cividis", aspect="auto", interpolation="nearest")
        cb = fig.colorbar(im, ax=ax)
        cb.set_label("log10 max |analytic − numeric|")
        bad_r, bad_c = np.nonzero(pd_.element_bad.reshape(row.shape))
        if 0 < bad_r.size <= MARK_MAX:
            ax.scatter(bad_c, bad_r, s=10, marker="x", color=style.FAIL_COLOR, lw=0.8, label="outside tolerance")
        if row.worst_index is not None:
            ax.scatter([row.worst_index[1]], [row.worst_index[0]], s=120, facecolors="none", edgecolors="white",
                       lw=1.5, label="worst")
        ax.set_xlabel(f"{row.name} dim 1")
        ax.set_ylabel(f"{row.name} dim 0")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if bad_r.size or row.worst_index is not None:
            ax.legend(fontsize=8, loc="upper right", framealpha=0.8)
    else:
        idx, bad = pd_.element_index, pd_.element_bad
        ax.scatter(idx[~bad], err[~bad], s=10, marker="o", color=style.PASS_COLOR, alpha=0.7, label="within tolerance")
        if bad.any():
            ax.scatter(idx[bad], err[bad], s=24, marker="x", color=style.FAIL_COLOR, label="outside tolerance")
        ax.axhline(report.atol, ls="--", color="0.4", lw=1, label=f"atol = {report.atol:g}")
        ax.set_yscale("log")
        ax.set_xlabel(f"element of {row.name} (flat index{', sampled' if not pd_.complete else ''})")
        ax.set_ylabel("max |analytic − numeric| over outputs")
        ax.legend(fontsize=8, loc="best", frameon=False)
    n_bad = int(pd_.element_bad.sum())
    ax.set_title(f"error per element of {row.name} {tuple(row.shape)}: {n_bad:,} of {len(err):,} "
                 "outside tolerance", fontsize=10)


def plot_report(report: GradcheckReport, tensor: str | None = None, ax=None, fig=None):
    """Draw the two panels; ``ax`` may be a pair of axes, ``fig`` a Figure to draw into."""
    row = _pick(report, tensor)
    if ax is not None:
        axes = list(np.ravel(ax))
        if len(axes) != 2:
            raise GradcheckError(f"ax must be two matplotlib axes (scatter, errors), received {len(axes)}.")
        fig = axes[0].figure
    else:
        if fig is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(11, 4.2), layout="constrained")
        axes = list(fig.subplots(1, 2))
    verdict = "passed" if row.passed else "FAILED"
    fig.suptitle(f"gradcheck of {report.fn}: '{row.name}' {verdict}  —  max abs err {row.max_abs_err:.3g}, "
                 f"max rel err {row.max_rel_err:.3g}  ({row.method})", fontsize=11,
                 color="black" if row.passed else style.FAIL_COLOR)
    _scatter(axes[0], report, row)
    _errors(axes[1], fig, report, row)
    return fig
