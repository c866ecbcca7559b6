"""The comm's logger writes to the kernel process's real stderr (the Jupyter server log).

Not to sys.stderr, and not to fd 2 either: ipykernel forwards both to the notebook (fd 2 is
captured by its output stream), and a bad message from the panel must not print into the
user's cells. ipykernel keeps a copy of the original fd 2 for its own log; so do we.
GRADSIGHT_COMM_LOG=debug logs each push and request.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO


def _server_log_stream() -> TextIO | None:
    original_fd = getattr(sys.stderr, "_original_stdstream_copy", None)  # set by ipykernel
    if isinstance(original_fd, int):
        try:
            return open(original_fd, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
        except OSError:
            return None
    return sys.__stderr__


log = logging.getLogger("gradsight.comm")
if not log.handlers:
    _stream = _server_log_stream()
    _handler: logging.Handler = (
        logging.StreamHandler(_stream) if _stream is not None else logging.NullHandler()
    )
    _handler.setFormatter(logging.Formatter("[gradsight.comm] %(levelname)s %(message)s"))
    log.addHandler(_handler)
    log.propagate = False
    _level = os.environ.get("GRADSIGHT_COMM_LOG", "INFO").strip().upper()
    if _level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        # an unknown level must not make the comm import fail (the panel would never connect)
        log.setLevel("INFO")
        log.warning("GRADSIGHT_COMM_LOG=%r is not a log level; using INFO. Use one of debug, info, "
                    "warning, error.", os.environ.get("GRADSIGHT_COMM_LOG"))
    else:
        log.setLevel(_level)


class RateLimited:
    """At most ``burst`` lines per ``period`` seconds for one kind of message (a flood of bad
    requests must not fill the server log); what was held back is counted in the next line."""

    def __init__(self, burst: int = 20, period: float = 60.0, clock=None):
        import time

        self.burst, self.period = burst, period
        self.clock = clock or time.monotonic
        self._window_start = -float("inf")
        self._count = 0
        self.suppressed = 0

    def warning(self, msg: str, *args) -> bool:
        now = self.clock()
        if now - self._window_start >= self.period:
            self._window_start, self._count = now, 0
        if self._count >= self.burst:
            self.suppressed += 1
            return False
        self._count += 1
        if self.suppressed:
            msg = f"{msg} ({self.suppressed} similar lines suppressed)"
            self.suppressed = 0
        log.warning(msg, *args)
        return True
