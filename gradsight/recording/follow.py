"""A dashboard on a live recording: a background thread looks for new chunks and redraws.

A Watcher's dashboard redraws from inside ``step()``; a recording has no steps in this
process, so a daemon thread polls it every ``interval`` seconds (spaced further apart when
drawing is slow), redraws when something new arrived, and stops when the writer finishes
(after a last redraw) or the dashboard is closed or dropped.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

INTERVAL = 0.5        # a few updates a second at most
MAX_INTERVAL = 3.0    # ... and never further apart than this (the first draw imports matplotlib)
MAX_RENDER_SHARE = 0.25


def follow(rec: Any, dashboard: Any, interval: float = INTERVAL) -> threading.Thread:
    ref = weakref.ref(dashboard)

    def run() -> None:
        failures = 0
        drawn = -1
        while True:
            dash = ref()
            if dash is None or getattr(dash, "comm", True) is None:  # dropped or closed
                return
            live = rec.live
            try:
                rec.refresh()
                if rec.version != drawn or not live:
                    drawn = rec.version
                    dash.refresh(live=True)
                failures = 0
            except Exception:  # a view must never kill the follower for good; give up after a few
                failures += 1
                if failures > 3:
                    return
            pause = min(MAX_INTERVAL, max(interval, getattr(dash, "render_seconds", 0.0) / MAX_RENDER_SHARE))
            del dash
            if not live:
                return
            time.sleep(pause)

    thread = threading.Thread(target=run, name=f"gradsight-follow:{rec.root.name}", daemon=True)
    thread.start()
    return thread
