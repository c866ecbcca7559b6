"""Fans watcher events out to open sessions, throttled, and only while a session is open.

The hub announces events and cell state to its sessions (the :class:`Listener` calls); it
never reads or writes a session's fields, and imports neither the session nor the handlers.

Costs nothing without a panel: the registry subscription and the IPython cell hooks exist
only between the first session's attach and the last session's detach.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..throttle import ThrottledSubscriber
from .limits import MAX_PUSH_SHARE, MAX_SESSIONS, MIN_PUSH_INTERVAL_S
from .server_log import log


class Listener(Protocol):
    """What the hub tells an open session (comm.session.Session is one)."""

    def push_status(self) -> None: ...
    def push_update(self, trigger: Any = None, fresh: bool = True, shared: dict | None = None) -> None: ...
    def close(self) -> None: ...
    def on_cell_start(self) -> None: ...
    def on_cell_end(self) -> None: ...


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
        self.sessions: list[Listener] = []
        self.executing = False
        self._lock = threading.RLock()
        self._unsubscribe: Callable[[], None] | None = None
        self.throttle = ThrottledSubscriber(self._push_to_sessions, min_interval=min_interval, max_share=max_share,
                                            clock=clock, flush_shown=True)

    @property
    def interval(self) -> float:
        """Seconds between live pushes now (grows when a push is slow)."""
        return self.throttle.interval

    @property
    def subscribed(self) -> bool:
        return self._unsubscribe is not None

    def attach(self, session: Listener) -> None:
        with self._lock:
            if session in self.sessions:
                return
            self.sessions.append(session)
            if len(self.sessions) == 1:
                self._start()
            stale = self._oldest_beyond_cap()
        if stale is not None:  # comms opened and never closed (reloaded tabs) expire
            log.info("more than %d panel comms open: closing the one silent longest", MAX_SESSIONS)
            stale.close()
        if self.executing:  # joined mid-cell: it hears the cell state like the others
            session.on_cell_start()

    def detach(self, session: Listener) -> None:
        with self._lock:
            if session not in self.sessions:
                return
            self.sessions.remove(session)
            if not self.sessions:
                self._stop()

    def _oldest_beyond_cap(self) -> Any:
        if len(self.sessions) <= MAX_SESSIONS:
            return None
        return min(self.sessions[:-1], key=lambda s: getattr(s, "last_heard", 0.0))

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
        self.throttle.forget()
        self.executing = False

    # -- registry events (main thread, inside gs.watch / w.step / w.close) ------------------
    def on_event(self, event: str, watcher: Any) -> None:
        try:
            if event == "step":
                log.debug("step event %s", getattr(watcher, "step_count", "?"))
                self.throttle.step(watcher)
            elif event in ("watch", "close", "open"):  # "open": a recording (gs.open)
                if event == "close":  # hold no reference to a closed watcher
                    self.throttle.forget(watcher)
                for s in list(self.sessions):
                    s.push_status()
                if event == "watch":
                    self.throttle.run(None)
        except Exception as e:  # never break the user's training step
            log.warning("push after %r failed: %s: %s", event, type(e).__name__, e)

    def _push_to_sessions(self, watcher: Any, fresh: bool) -> None:
        start = time.perf_counter()
        shared: dict = {}  # each message is built once per push, whatever the number of panels
        for s in list(self.sessions):
            s.push_update(watcher, fresh=fresh, shared=shared)
        log.debug("pushed step %s to %d panel(s) in %.1f ms", getattr(watcher, "step_count", "?"),
                  len(self.sessions), 1e3 * (time.perf_counter() - start))

    def flush(self) -> None:
        """At the end of a cell: send what the throttle held back, with fresh findings, so
        the panel ends on the last step."""
        self.throttle.flush()

    # -- IPython cell events: announced to every session ------------------------------------
    def on_cell_start(self, info: Any = None) -> None:
        self.executing = True
        for s in list(self.sessions):
            s.on_cell_start()

    def on_cell_end(self, result: Any = None) -> None:
        self.executing = False
        for s in list(self.sessions):
            s.on_cell_end()
        try:
            self.flush()
        except Exception as e:
            log.warning("final push failed: %s: %s", type(e).__name__, e)
