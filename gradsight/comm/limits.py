"""Size bounds of protocol messages, read from protocol/schema.json, and the push pacing.

A panel must never be able to make the kernel build or parse an unbounded message, and a
1000-layer model must not send megabytes four times a second. The size bounds are the
schema's maxItems/maxLength (one definition: the panel validates against the same file);
the pacing below is the kernel's own choice.
"""

from .schema import MAX_REQUEST_BYTES, definition

_snapshot = definition("snapshot")["properties"]

MAX_LAYERS: int = _snapshot["layers"]["properties"]["names"]["maxItems"]  # rest counted in `total`
MAX_STEPS = 1000  # points of the per-step series (evenly decimated, last step kept)
MAX_FINDINGS: int = _snapshot["findings"]["properties"]["rows"]["maxItems"]  # the most severe are kept
MAX_HIST_STEPS: int = definition("histogram_series")["maxItems"]  # histograms per kind in a `layer` reply
MAX_REPORTS: int = definition("gradcheck_reports")["properties"]["reports"]["maxItems"]
MAX_REPORT_TENSORS: int = definition("gradcheck_report")["properties"]["tensors"]["maxItems"]
MAX_WATCHERS: int = definition("status")["properties"]["watchers"]["maxItems"]
MAX_TEXT: int = definition("text")["maxLength"]
MAX_SHORT_TEXT: int = definition("short_text")["maxLength"]
MAX_AFFECTED: int = definition("finding")["properties"]["affected"]["maxItems"]  # layers named by one finding
MAX_COLUMNS: int = definition("columns")["maxProperties"]

PUSH_HIST_STEPS = 8  # histograms per kind in a pushed `layer` (pushes run while training)
MIN_PUSH_INTERVAL_S = 0.25  # at most 4 pushes a second while a training cell runs
MAX_PUSH_SHARE = 0.015  # pushes take at most 1.5% of a training loop's wall time (interval adapts; issue 16: panel <= 2%)
MAX_SESSIONS = 8  # open panel comms per kernel; beyond it the one silent longest is closed
FINDINGS_EVERY_S = 1.0  # pushes re-read w.findings() at most this often (and at the end of a cell)

__all__ = ["MAX_REQUEST_BYTES", "MAX_LAYERS", "MAX_STEPS", "MAX_FINDINGS", "MAX_HIST_STEPS", "MAX_REPORTS",
           "MAX_REPORT_TENSORS", "MAX_WATCHERS", "MAX_TEXT", "MAX_SHORT_TEXT", "MAX_AFFECTED", "MAX_COLUMNS", "PUSH_HIST_STEPS",
           "MIN_PUSH_INTERVAL_S", "MAX_PUSH_SHARE", "FINDINGS_EVERY_S"]
