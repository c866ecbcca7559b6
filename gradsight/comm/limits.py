"""Size bounds of protocol messages, mirrored by maxItems/maxLength in protocol/schema.json.

A panel must never be able to make the kernel build or parse an unbounded message, and a
1000-layer model must not send megabytes four times a second; tests check both sides agree.
"""

MAX_REQUEST_BYTES = 16 * 1024  # JSON-encoded size of one incoming message
MAX_LAYERS = 1024  # layers per snapshot (model order; the rest are counted in `total`)
MAX_STEPS = 1000  # points of the per-step series (evenly decimated, last step kept)
MAX_FINDINGS = 200  # findings per snapshot (most severe, most recent first)
MAX_HIST_STEPS = 24  # histograms per kind in a `layer` reply
PUSH_HIST_STEPS = 8  # histograms per kind in a pushed `layer` (pushes run while training)
MAX_REPORTS = 20  # gradcheck reports per reply
MAX_REPORT_TENSORS = 64
MAX_WATCHERS = 64
MAX_TEXT = 4000
MAX_SHORT_TEXT = 256
MAX_COLUMNS = 64
MIN_PUSH_INTERVAL_S = 0.25  # at most 4 pushes a second while a training cell runs
MAX_PUSH_SHARE = 0.05  # pushes take at most 5% of a training loop's wall time (interval adapts)
MAX_SESSIONS = 8  # open panel comms per kernel; beyond it the one silent longest is closed
FINDINGS_EVERY_S = 1.0  # pushes re-read w.findings() at most this often (and at the end of a cell)
