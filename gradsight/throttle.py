"""The one throttle between a watcher's steps and a live view (the panel's hub, the dashboard).

A view redrawn on every step would cost more than the training it shows, so a step is shown
at most every ``interval`` seconds; a slow redraw spaces the next ones so that drawing stays
under ``max_share`` of the wall time. A step held back is not lost: :meth:`flush`, at the end
of the cell, shows it, so every view ends on the last step. Pure Python, no gradsight imports:
both consumers sit above it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any


class ThrottledSubscriber:
    """Calls ``show(watcher, fresh)`` for "step" events, throttled; ``flush()`` shows what was held.

    ``fresh`` is False for a live (mid-cell) show and True for a flushed one. With
    ``flush_shown=True`` a flush also re-shows the watcher last shown live (the hub does: its
    live pushes reuse findings cached for a second, the last push of a cell must be exact).
    """

    def __init__(self, show: Callable[[Any, bool], None], *, min_interval: float,
                 max_interval: float = math.inf, max_share: float | None = None,
                 clock: Callable[[], float] = time.monotonic, flush_shown: bool = False):
        self.show = show
        self.min_interval = float(min_interval)
        self.max_interval = float(max_interval)
        self.max_share = max_share
        self.interval = self.min_interval
        self.clock = clock
        self.flush_shown = flush_shown
        self.last_shown = -math.inf   # clock time the last show ended
        self.pending: Any = None      # the watcher whose step the throttle held back
        self._shown: Any = None       # the watcher last shown live (flushed again if flush_shown)

    def step(self, watcher: Any) -> None:
        """One "step" event: show it now, or hold it until the interval has passed or the cell ends."""
        if self.clock() - self.last_shown >= self.interval:
            self.run(watcher, fresh=False)
            self._shown = watcher
        else:
            self.pending = watcher

    def run(self, watcher: Any, fresh: bool = True, *, timed: bool = True) -> None:
        """Show ``watcher`` now; ``timed`` lets this show's cost set the next interval."""
        start = self.clock()
        self.pending = None
        if fresh:
            self._shown = None
        self.show(watcher, fresh)
        self.last_shown = end = self.clock()
        if timed and self.max_share:
            self.interval = max(self.min_interval, min(self.max_interval, (end - start) / self.max_share))

    def flush(self) -> None:
        """End of a cell: show the step the throttle held back (or re-show the last one)."""
        watcher = self.pending if self.pending is not None else (self._shown if self.flush_shown else None)
        if watcher is not None:
            self.run(watcher)

    def shown_elsewhere(self) -> None:
        """A redraw outside the throttle (display, a button): nothing is held, the interval restarts."""
        self.pending = None
        self.last_shown = self.clock()

    def forget(self, watcher: Any = None) -> None:
        """Drop held references (to ``watcher`` only, or all): a closed watcher is never kept alive."""
        if watcher is None or self.pending is watcher:
            self.pending = None
        if watcher is None or self._shown is watcher:
            self._shown = None
