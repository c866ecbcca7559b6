"""The last reports made in this process, for the JupyterLab panel's gradcheck list."""

from __future__ import annotations

import threading
from collections import deque

from .report import GradcheckReport

MAX_REPORTS = 20
"""Reports kept; each holds summaries and a few thousand sampled entries, never Jacobians."""

_reports: deque[GradcheckReport] = deque(maxlen=MAX_REPORTS)
_lock = threading.Lock()


def record(report: GradcheckReport) -> None:
    with _lock:
        _reports.append(report)


def recent_reports() -> list[GradcheckReport]:
    """The last ``MAX_REPORTS`` reports, oldest first."""
    with _lock:
        return list(_reports)


def clear_reports() -> None:
    with _lock:
        _reports.clear()
