"""The gradcheck report figure: delegates to ``GradcheckReport.plot`` (issue 4), with an
empty state for "nothing checked yet" so the dashboard tab never shows a broken axes."""

from __future__ import annotations

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
