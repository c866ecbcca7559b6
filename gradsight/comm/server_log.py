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
    log.setLevel(os.environ.get("GRADSIGHT_COMM_LOG", "INFO").upper())
    log.propagate = False
