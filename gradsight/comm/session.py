"""One open comm with one panel: receives requests, sends replies and pushes.

Requests may arrive on a kernel subshell thread (JupyterLab 4.6 sends comm messages over
subshells, so the panel is served while a cell runs) while pushes come from w.step() on the
main thread: selection state and sends are guarded by a lock.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from .. import bus
from . import payloads
from .errors import ProtocolError
from .handlers import HANDLERS
from .histcache import HistogramCache
from .limits import FINDINGS_EVERY_S, PUSH_HIST_STEPS
from .schema import parse_request
from .server_log import RateLimited, log

MAX_SEND_FAILURES = 3      # consecutive failed sends before a comm is dropped


class Session:
    """The kernel end of one comm. `confirmed` is False for a comm the kernel opened itself
    (on import) until the panel sends its first request; see :meth:`on_cell_start`.

    It is the context the handlers answer in (``sources``, ``executing``, ``follow``,
    ``snapshot_of``), and a listener of ``hub`` (any object with ``sources``, ``attach`` and
    ``detach``: comm.hub.Hub), which announces steps and cell state to it.
    """

    def __init__(self, comm: Any, hub: Any, *, confirmed: bool = True):
        self.comm = comm
        self.hub = hub
        self.confirmed = confirmed
        self.cell_ended = False  # a whole cell has run since this comm opened
        self.executing = False   # a cell is running now (announced by the hub)
        self.closed = False
        self._lock = threading.RLock()
        self._watcher: str | None = None  # followed watcher; None: the most recent one
        self._layer: str | None = None  # followed layer; None: first flagged, else first
        self._rank: int | None = None  # rank whose layers the pushes carry; None: the source's own
        self._push_failures: set[str] = set()
        self._hists = HistogramCache()
        # (weak watcher, time, payload, frame): a panel must not keep a closed watcher alive
        self._findings: tuple[weakref.ref, float, dict[str, Any], Any] | None = None
        self.last_heard = time.monotonic()  # last request from the panel (or the open)
        self._send_failures = 0
        self._refusals = RateLimited()  # log lines for refused and failed requests (a flood stays short)
        comm.on_msg(self._on_msg)
        comm.on_close(self._on_close)
        _keep_frontend_routing(comm)
        hub.attach(self)
        log.info("panel comm %s opened by the %s", self._comm_id(), "panel" if confirmed else "kernel")

    @property
    def sources(self) -> Any:
        return self.hub.sources

    # -- incoming ---------------------------------------------------------------------------
    def _on_msg(self, msg: dict[str, Any]) -> None:
        content = msg.get("content") if isinstance(msg, dict) else None
        data = content.get("data") if isinstance(content, dict) else None
        self.handle(data, msg.get("buffers") if isinstance(msg, dict) else None)

    def handle(self, data: Any, buffers: list | None = None) -> None:
        """Answer one request; every failure becomes an `error` reply and a log line."""
        req: dict[str, Any] | None = None
        try:
            req = parse_request(data, buffers)
            log.debug("request %s %s on %s", req["kind"], req["id"], threading.current_thread().name)
            self.confirmed = True
            self.last_heard = time.monotonic()
            with bus.lock:  # a consistent snapshot while training writes on another thread
                reply = HANDLERS[req["kind"]](self, req)
        except ProtocolError as e:
            if req is not None:  # raised by a handler: answer to that request
                e.request_id, e.request_kind = req["id"], req["kind"]
            self._refusals.warning("refused %s request (%s): %s", e.request_kind or "a", e.code, e.message)
            reply = payloads.error(e.code, e.message, e.request_id, e.request_kind)
        except Exception as e:  # a bug or a watcher changing under us: answer, never raise
            req_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
            self._refusals.warning("failed to answer a request: %s: %s", type(e).__name__, e)
            reply = payloads.error(
                "internal", f"{type(e).__name__}: {e}", req_id if req_id and len(req_id) <= 64 else None
            )
        self.send(reply)

    def _on_close(self, msg: Any = None) -> None:
        self.closed = True
        self.hub.detach(self)
        log.info("panel comm %s closed by the panel", self._comm_id())

    def _comm_id(self) -> str:
        return str(getattr(self.comm, "comm_id", "?"))[:12]

    # -- selection ---------------------------------------------------------------------------
    def follow(self, watcher: str | None = None, layer: str | None = None) -> None:
        with self._lock:
            if watcher is not None and watcher != self._watcher:
                self._watcher = watcher
                self._layer = None
                self._rank = None
            if layer is not None:
                self._layer = layer

    def follow_rank(self, rank: int | None) -> None:
        """The rank whose layer statistics the pushes carry (None: the source's own)."""
        with self._lock:
            self._rank = rank

    @property
    def rank(self) -> int | None:
        with self._lock:
            return self._rank

    def snapshot_of(self, w: Any, request_id: str | None = None, **kw: Any) -> payloads.Message:
        msg, buffers = payloads.snapshot(w, request_id, **kw)
        msg["selected_layer"] = self._pick_layer(msg)
        return msg, buffers

    def _pick_layer(self, snapshot: dict[str, Any]) -> str | None:
        names = snapshot["layers"]["names"]
        with self._lock:
            if self._layer is not None and self._layer in names:
                return self._layer
        for row in snapshot["findings"]["rows"]:
            if row["severity"] != "info" and row["layer"] in names:
                return row["layer"]
        return names[0] if names else None

    # -- outgoing ---------------------------------------------------------------------------
    def send(self, message: payloads.Message) -> None:
        data, buffers = message
        with self._lock:
            if self.closed:
                return
            try:
                self.comm.send(data=data, buffers=buffers or None)
                self._send_failures = 0
                return
            except Exception as e:
                self._send_failures += 1
                log.warning("could not send %s: %s: %s", data.get("kind"), type(e).__name__, e)
        if self._send_failures >= MAX_SEND_FAILURES:  # the comm stopped answering: drop it
            log.info("dropping panel comm %s after %d failed sends", self._comm_id(), self._send_failures)
            self.close()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
        try:
            self.comm.close()
        except Exception as e:
            log.warning("could not close comm: %s", e)
        self.hub.detach(self)

    def push_status(self) -> None:
        self.send(payloads.status(self.sources))

    def push_update(self, trigger: Any = None, fresh: bool = True, shared: dict | None = None) -> None:
        """Snapshot + selected layer of the followed watcher, if `trigger` (a watcher) is it.

        Runs inside w.step(), so it reuses what it can: one layers() frame for both
        messages, cached histograms, findings re-read at most once a second unless
        `fresh` (the final push of a cell), and — through `shared`, one dict per push from
        the hub — the messages other sessions already built for the same watcher and layer.
        """
        if self.closed:
            return
        try:
            with self._lock:
                name, rank = self._watcher, self._rank
            w = self.sources.find(name)
        except ProtocolError:
            return
        if trigger is not None and trigger is not w:
            return
        shared = {} if shared is None else shared
        try:
            base = shared.get(("snapshot", id(w), rank))
            if base is None:
                layers = w.layers()
                now = time.monotonic()
                cached = self._findings
                if fresh or cached is None or cached[0]() is not w or now - cached[1] >= FINDINGS_EVERY_S:
                    frame = w.findings()
                    cached = (weakref.ref(w), now, payloads.findings(frame), frame)
                    self._findings = cached
                msg, buffers = payloads.snapshot(w, None, layers=layers, findings_part=cached[2],
                                                 findings_df=cached[3], rank=rank)
                base = shared[("snapshot", id(w), rank)] = (msg, buffers, layers)
            msg, buffers, layers = base
            msg = dict(msg)  # the selected layer is this panel's own
            msg["selected_layer"] = layer = self._pick_layer(msg)
            self.send((msg, buffers))
            if layer is not None:
                key = ("layer", id(w), layer, rank)
                if key not in shared:
                    shared[key] = payloads.layer(w, layer, PUSH_HIST_STEPS, layers=layers, cache=self._hists,
                                                 rank=rank)
                self.send(shared[key])
        except Exception as e:  # report once per kind of failure, keep training
            key = type(e).__name__
            if key not in self._push_failures:
                self._push_failures.add(key)
                log.warning("push of %s failed: %s: %s", getattr(w, "name", "?"), key, e)

    def on_cell_end(self) -> None:
        self.executing = False
        self.cell_ended = True

    def on_cell_start(self) -> None:
        """A kernel-opened comm nobody answered during a whole cell has no panel: close it."""
        self.executing = True
        if not self.confirmed and self.cell_ended:
            log.info("no gradsight panel answered; closing the announcement comm")
            self.close()


def _keep_frontend_routing(comm: Any) -> None:
    """Serve the panel's requests on the subshell the front-end sent them to.

    ipykernel 7 routes a comm's incoming messages to the subshell that the comm's last
    outgoing message came from (so that ipywidgets replies reach a waiting cell). Our pushes
    come from w.step() on the main thread, which would queue every later request behind the
    running training cell. The hook is private: where it does not exist, nothing changes.
    """
    if hasattr(comm, "_reply_subshell_for"):
        comm._reply_subshell_for = _frontend_choice


def _frontend_choice(data: Any, default: Any) -> Any:
    return default
