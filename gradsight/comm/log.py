"""The comm's logger writes to the kernel process's real stderr (the Jupyter server log).

Not to sys.stderr: inside a kernel that is the notebook's output area, and a bad message
from the panel must not print into the user's cells.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("gradsight.comm")
if not log.handlers:
    _handler = logging.StreamHandler(sys.__stderr__)
    _handler.setFormatter(logging.Formatter("[gradsight.comm] %(levelname)s %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False
