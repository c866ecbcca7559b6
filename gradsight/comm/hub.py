"""Fans watcher events out to open sessions, throttled, and only while a session is open.

Costs nothing without a panel: the registry subscription and the IPython cell hooks exist
only between the first session's attach and the last session's detach.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .limits import MAX_PUSH_SHARE, MIN_PUSH_INTERVAL_S
from .server_log import log

if TYPE_CHECKING:
    from .session import Session


class Hub:
    def __init__(
        self,
        sources: Any,
        shell: Any = None,
        *,
        min_interval: float = MIN_PUSH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        max_share: float | None = MAX_PUSH_SHARE,
    ):
        self.sources = sources
        self.shell = shell
        self.min_interval = min_interval
        self.interval = min_interval
        self.max_share = max_share
        self.clock = clock
        self.sessions: list[Session] = []
        self.executing = False
        self._lock = threading.RLock()
        self._unsubscribe: Callable[[], None] | None = None
        self._last_push = -float("inf")
        self._pending: Any = None  # the watcher whose step was throttled, if any
        self._stale: Any = None  # the watcher last pushed with cached findings, if any

    @property
    def subscribed(self) -> bool:
        return self._unsubscribe is not None

    def attach(self, session: Session) -> None:
        with self._lock:
            if session in self.sessions:
                return
            self.sessions.append(session)
            if len(self.sessions) == 1:
                self._start()

    def detach(self, session: Session) -> None:
        with self._lock:
            if session not in self.sessions:
                return
            self.sessions.remove(session)
            if not self.sessions:
                self._stop()

    def _start(self) -> None:
        self._unsubscribe = self.sources.subscribe(self.on_event)
        events = getattr(self.shell, "events", None)
        if events is not None:
            events.register("pre_run_cell", self.on_cell_start)
            events.register("post_run_cell", self.on_cell_end)

    def _stop(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        events = getattr(self.shell, "events", None)
        if events is not None:
            for name, cb in (("pre_run_cell", self.on_cell_start), ("post_run_cell", self.on_cell_end)):
                with contextlib.suppress(ValueError):  # already unregistered
                    events.unregister(name, cb)
        self._pending = None
        self._stale = None
        self.executing = False

    # -- registry events (main thread, inside gs.watch / w.step / w.close) ------------------
    def on_event(self, event: str, watcher: Any) -> None:
        try:
            if event == "step":
                now = self.clock()
                log.debug("step event %s", getattr(watcher, "step_count", "?"))
                if now - self._last_push >= self.interval:
                    self._push(watcher, fresh=False)
                    self._stale = watcher
                else:
                    self._pending = watcher
            elif event in ("watch", "close"):
                if event == "close":  # hold no reference to a closed watcher
                    self._pending = None if self._pending is watcher else self._pending
                    self._stale = None if self._stale is watcher else self._stale
                for s in list(self.sessions):
                    s.push_status()
                if event == "watch":
                    self._push(None)
        except Exception as e:  # never break the user's training step
            log.warning("push after %r failed: %s: %s", event, type(e).__name__, e)

    def _push(self, watcher: Any, fresh: bool = True) -> None:
        start = self.clock()
        self._pending = None
        if fresh:
            self._stale = None
        for s in list(self.sessions):
            s.push_update(watcher, fresh=fresh)
        self._last_push = end = self.clock()
        # a big model's push costs more: space pushes so they take at most MAX_PUSH_SHARE
        if self.max_share:
            self.interval = max(self.min_interval, (end - start) / self.max_share)
        log.debug(
            "pushed step %s to %d panel(s) in %.1f ms; next push in >= %.2f s",
            getattr(watcher, "step_count", "?"),
            len(self.sessions),
            1e3 * (end - start),
            self.interval,
        )

    def flush(self) -> None:
        """At the end of a cell: send what the throttle held back, with fresh findings, so
        the panel ends on the last step."""
        watcher = self._pending if self._pending is not None else self._stale
        if watcher is not None:
            self._push(watcher)

    # -- IPython cell events ----------------------------------------------------------------
    def on_cell_start(self, info: Any = None) -> None:
        self.executing = True
        for s in list(self.sessions):
            s.on_cell_start()

    def on_cell_end(self, result: Any = None) -> None:
        self.executing = False
        for s in list(self.sessions):
            s.cell_ended = True
        try:
            self.flush()
        except Exception as e:
            log.warning("final push failed: %s: %s", type(e).__name__, e)
