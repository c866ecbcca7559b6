"""Recordings: a run as a directory of Parquet tables that any process can read, live or later.

    w = gs.watch(model, optimizer=opt, record="runs/exp1")   # stream while training
    w.save("runs/exp1")                                       # or write what a watcher holds, once
    rec = gs.open("runs/exp1")                                # the Watcher's read API on the files

pyarrow loads on first use of any of these, never on ``import gradsight``.
The format is documented in docs/recording-format.md.
"""

from .format import RecordingError, RecordingNotFound, RecordingVersionError
from .recorder import RecordTo

__all__ = ["RecordTo", "RecordingError", "RecordingNotFound", "RecordingVersionError"]
