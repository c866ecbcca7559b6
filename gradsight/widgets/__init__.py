"""In-notebook views: matplotlib figures and the live ipywidgets dashboard.

Every figure takes a Watcher (or the tables it returns), draws on ``ax=`` when given,
and returns a matplotlib ``Figure``; none touches the live model. matplotlib and
ipywidgets load on first use: ``import gradsight`` and ``import gradsight.widgets``
import neither.

    from gradsight import widgets as gw
    gw.gradient_flow(w)          # the first picture to look at
    gw.distribution(w, "conv2", of="grad")
    gw.heatmap(w)                # layer × step gradient norm
    gw.dead_units(w, "relu1")
    gw.training_curves(w)        # loss, lr, gradient norm and the step's time split
    gw.saved_memory(w)           # bytes each layer saves for backward
    gw.compare(gs.open("runs/a"), gs.open("runs/b"))   # two runs side by side
    gw.gradcheck_figure(report)
    w.dashboard()                # all of it, live
"""

from __future__ import annotations

# The figure modules import matplotlib only inside their functions, so importing them here
# is cheap; the functions replace the same-named submodules as attributes of this package.
from .compare import compare
from .dead_units import UnitActivity, dead_units
from .distribution import distribution
from .gradcheck_plot import gradcheck_figure
from .gradient_flow import gradient_flow
from .heatmap import heatmap
from .histogram import histogram
from .saved_memory import saved_memory
from .summary_html import findings_html, watcher_html
from .training_curves import training_curves

__all__ = ["Dashboard", "UnitActivity", "compare", "dead_units", "distribution", "findings_html",
           "gradcheck_figure",
           "gradient_flow", "heatmap", "histogram", "saved_memory", "training_curves", "watcher_html"]


def __getattr__(name: str):
    if name == "Dashboard":  # ipywidgets loads here, on first use
        from .dashboard import Dashboard

        return Dashboard
    raise AttributeError(f"module 'gradsight.widgets' has no attribute {name!r}")
