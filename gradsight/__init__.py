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
from .nonfinite import NonFiniteError
from .recording.recorder import RecordTo
from .records.histogram import Histogram
from .warnings import GradsightWarning
from .watcher import Watcher, watch

__all__ = ["watch", "Watcher", "timed", "open", "dashboard", "Recording", "RecordTo", "Histogram", "Thresholds", "Finding",
           "gradcheck", "GradcheckReport", "GradsightWarning", "NonFiniteError", "load_ipython_extension"]


def open(path):  # noqa: A001 - gs.open(path) is the contract
    """Open a recording (``gs.watch(..., record=path)`` or ``w.save(path)``): a :class:`Recording`
    that answers the Watcher's queries, and follows the run while it is still being written."""
    from .recording.reader import open_recording

    return open_recording(path)


def dashboard(source=None):
    """The live ipywidgets dashboard of ``source`` (a Watcher or a Recording; default: the newest
    watcher of this kernel), with a dropdown that switches between the watchers alive in this kernel."""
    from .widgets.dashboard import Dashboard

    return Dashboard(source)


def __getattr__(name):
    if name == "Recording":  # the reader loads on first use
        from .recording.reader import Recording

        return Recording
    # the views load on first use: `import gradsight` never imports matplotlib or ipywidgets
    if name == "widgets":
        import importlib

        return importlib.import_module(".widgets", __name__)
    raise AttributeError(f"module 'gradsight' has no attribute {name!r}")


def _jupyter_labextension_paths():
    """Where the prebuilt JupyterLab panel lives (used by `jupyter labextension develop`)."""
    return [{"src": "labextension", "dest": "gradsight"}]


def load_ipython_extension(ipython):
    """``%load_ext gradsight``: register the panel's comm target and the ``%gradsight`` magic."""
    from . import comm, magics

    magics.register(ipython)
    if getattr(ipython, "kernel", None) is not None:  # terminal IPython has the magic, not the panel
        comm.register(ipython)


def _register_panel_target() -> None:
    try:
        from . import comm

        comm.register_if_ipython()
    except Exception:  # importing gradsight must never fail because of the panel
        pass


_register_panel_target()
