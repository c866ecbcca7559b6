"""gradsight — a gradient debugger for PyTorch that lives in Jupyter.

    import gradsight as gs
    w = gs.watch(model, optimizer=opt)
    ... train ...
    w.findings(); w.layers(); w.history("grad_norm"); w.histogram("fc1", of="grad")
"""

from ._version import __version__ as __version__  # package.json holds it
from .detectors import Finding, Thresholds
from .distributed import timed
from .gradcheck import GradcheckReport, gradcheck
from .records.histogram import Histogram
from .warnings import GradsightWarning
from .watcher import Watcher, watch

__all__ = ["watch", "Watcher", "timed", "Histogram", "Thresholds", "Finding", "gradcheck", "GradcheckReport",
           "GradsightWarning", "load_ipython_extension"]


def __getattr__(name):
    # the views load on first use: `import gradsight` never imports matplotlib or ipywidgets
    if name == "widgets":
        import importlib

        return importlib.import_module(".widgets", __name__)
    raise AttributeError(f"module 'gradsight' has no attribute {name!r}")


def _jupyter_labextension_paths():
    """Where the prebuilt JupyterLab panel lives (used by `jupyter labextension develop`)."""
    return [{"src": "labextension", "dest": "gradsight"}]


def load_ipython_extension(ipython):
    """``%load_ext gradsight``: register the panel's comm target in this kernel."""
    from . import comm

    comm.register(ipython)


def _register_panel_target() -> None:
    try:
        from . import comm

        comm.register_if_ipython()
    except Exception:  # importing gradsight must never fail because of the panel
        pass


_register_panel_target()
