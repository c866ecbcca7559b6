"""Recordings as panel sources: listed next to the watchers, opened on the panel's request, and
kept fresh by a poller the comm owns.

A Recording answers the Watcher's read API, so the payload code serves it unchanged; what it
lacks is step events (its writer is another process), so while a panel follows a live
recording a daemon thread looks for new chunks a few times a second and pushes through the
session exactly as ``w.step()`` would. The thread stops when the panel closes or follows
something else, and when the recording is closed (``rec.close()``) or its writer finishes
(after a last push).

A source's panel name is ``"<run name> [<directory>]"``: a recording of the model being
watched in this kernel has the same run name, and the panel selects sources by name.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from pathlib import Path, PurePosixPath
from typing import Any

from ..widgets.source import label as source_label
from .errors import ProtocolError
from .server_log import log

POLL_SECONDS = 0.3       # a few pushes a second at most
MAX_POLL_SECONDS = 3.0   # slowed down when pushing is slow ...
MAX_PUSH_SHARE = 0.25    # ... so that pushing takes at most this share of the time


class RecordingSource:
    """A Recording under its panel name; everything else is the recording's own read API.

    Holds the recording weakly: a recording nobody holds any more leaves the panel's list."""

    def __init__(self, rec: Any, name: str):
        self._rec = weakref.ref(rec)
        self.name = name

    @property
    def recording(self) -> Any:
        rec = self._rec()
        if rec is None:
            raise ProtocolError("not_found", f"the recording {self.name!r} was closed")
        return rec

    def __getattr__(self, attr: str) -> Any:  # layers(), steps(), findings(), histogram(), step_count...
        return getattr(self.recording, attr)

    @property
    def live(self) -> bool:
        return bool(self.recording.live)


_sources: weakref.WeakKeyDictionary[Any, RecordingSource] = weakref.WeakKeyDictionary()


def recording_sources(registry: Any) -> list[RecordingSource]:
    """The recordings open in this process as sources, with stable objects and unique names."""
    recs = registry.open_recordings() if hasattr(registry, "open_recordings") else []
    taken = {_sources[rec].name for rec in recs if rec in _sources}
    out: list[RecordingSource] = []
    for rec in recs:
        src = _sources.get(rec)
        if src is None:
            base = name = source_label(rec)
            k = 2
            while name in taken:
                name, k = f"{base}#{k}", k + 1
            taken.add(name)
            src = _sources[rec] = RecordingSource(rec, name)
        out.append(src)
    return out


def is_recording(source: Any) -> bool:
    return isinstance(source, RecordingSource)


# -- opening on the panel's request -------------------------------------------------------------
def server_root(notebook: str, cwd: str | None = None) -> Path:
    """The Jupyter server's root directory, from the kernel's working directory (the notebook's
    folder, where the server starts kernels) and the notebook's server-relative path."""
    here = Path(cwd or os.getcwd()).resolve()
    parts = [p for p in PurePosixPath(notebook).parent.parts if p not in ("", ".")]
    if any(p == ".." for p in parts) or PurePosixPath(notebook).is_absolute():
        raise ProtocolError("bad_message", f"notebook path {notebook[:200]!r} is not relative to the server root")
    root = here
    for part in reversed(parts):
        if root.name != part:
            raise ProtocolError(
                "unavailable",
                f"this kernel runs in {str(here)!r}, not in the folder of {notebook[:200]!r}: cannot tell where the "
                "server's root is. Open the recording in a cell instead: rec = gs.open(path)",
            )
        root = root.parent
    return root


def recording_dir(path: str, notebook: str, cwd: str | None = None) -> Path:
    """The recording directory ``path`` (server-relative, as the file browser names it: the
    directory or its manifest) names, checked to lie under the server's root."""
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts or not str(path).strip():
        raise ProtocolError(
            "bad_message",
            f"recording path {path[:200]!r} must be relative to the Jupyter server's root, without '..'; "
            "pick the recording in the file browser",
        )
    root = server_root(notebook, cwd)
    target = (root / Path(*rel.parts)).resolve() if rel.parts else root
    if target != root and root not in target.parents:
        raise ProtocolError("bad_message", f"recording path {path[:200]!r} leads outside the server's root")
    from ..recording.format import MANIFEST

    if target.name == MANIFEST and target.is_file():
        target = target.parent
    if not target.is_dir():
        raise ProtocolError("not_found", f"{path[:200]!r} does not exist under the server's root ({root})")
    if not (target / MANIFEST).is_file():
        raise ProtocolError(
            "not_found",
            f"{path[:200]!r} is not a gradsight recording: it has no {MANIFEST}. A recording is the folder given to "
            "gs.watch(..., record=...) or w.save(...)",
        )
    return target


def open_recording(registry: Any, path: str, notebook: str, cwd: str | None = None) -> RecordingSource:
    """The source of the recording at ``path``: the one already open in this kernel, else gs.open()."""
    target = recording_dir(path, notebook, cwd)
    for src in recording_sources(registry):
        if Path(src.recording.root).resolve() == target:
            return src
    from ..recording.format import RecordingError
    from ..recording.reader import open_recording as gs_open

    try:
        rec = gs_open(target)
    except RecordingError as e:
        raise ProtocolError("not_found", str(e)) from None
    _kept[:] = [r for r in _kept if not r.detached]
    _kept.append(rec)
    return next(s for s in recording_sources(registry) if s.recording is rec)


_kept: list[Any] = []  # recordings the panel opened (a user's gs.open result is kept by the user)


# -- keeping a followed live recording fresh -------------------------------------------------
class Poller:
    """Pushes a live recording's new steps to one session (see the module docstring)."""

    def __init__(self, session: Any, source: RecordingSource, interval: float = POLL_SECONDS):
        self._session = weakref.ref(session)
        self.source = source
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"gradsight-panel-poll:{source.name[:40]}",
                                       daemon=True)

    def start(self) -> Poller:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        rec = self.source.recording
        seen = rec.version
        failures = 0
        while not self.stopped.is_set():
            session = self._session()
            if session is None or session.closed or rec.detached:
                return
            start = time.perf_counter()
            try:
                live = rec.live
                rec.refresh()
                if rec.version != seen or not live:
                    seen = rec.version
                    session.push_update(self.source, fresh=True)
                if not live:
                    session.push_status()  # the selector's "live" mark goes
                failures = 0
            except Exception as e:  # a damaged chunk or a race with the writer: retry a few times
                failures += 1
                log.warning("polling recording %s failed: %s: %s", self.source.name, type(e).__name__, e)
                if failures > 3:
                    return
                live = True
            del session
            if not live:
                return
            spent = time.perf_counter() - start
            self.stopped.wait(min(MAX_POLL_SECONDS, max(self.interval, spent / MAX_PUSH_SHARE)))


_pollers: weakref.WeakKeyDictionary[Any, Poller] = weakref.WeakKeyDictionary()
_pollers_lock = threading.Lock()


def keep_fresh(session: Any, source: Any) -> Poller | None:
    """``session`` now follows ``source``: poll it if it is a live recording, and stop polling
    whatever this session followed before."""
    with _pollers_lock:
        old = _pollers.get(session)
        if old is not None and old.source is source and not old.stopped.is_set() and old.thread.is_alive():
            return old
        if old is not None:
            old.stop()
            del _pollers[session]
        if not is_recording(source) or source.recording.detached or not source.live:
            return None
        poller = _pollers[session] = Poller(session, source).start()
        return poller
