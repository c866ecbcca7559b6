"""``gs.open(path)``: a Recording answers the Watcher's queries from the files, live or finished.

The files are replayed into the same bounded history a watcher keeps
(:class:`~gradsight.records.run_history.RunHistory`) and the queries are the watcher's own
(:class:`~gradsight.records.queries.RunQueries`), so every table, figure and the dashboard
work unchanged. While the writer still appends (``rec.live``), each query first reads the
chunks that appeared since the last one (at most every ``poll_seconds``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..records.queries import RunQueries
from ..records.run_history import RunHistory
from .format import MANIFEST, RecordingError
from .ingest import ingest
from .loader import Loader
from .manifest import read_manifest, resolve, writer_alive

POLL_SECONDS = 0.2


def open_recording(path: Any) -> Recording:
    """Open the recording at ``path`` (a directory written by ``record=`` or ``w.save``)."""
    root = resolve(path)
    manifest = read_manifest(root)
    try:
        rec = Recording(root, manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, RecordingError):
            raise
        raise RecordingError(f"gradsight.open: {str(root / MANIFEST)!r} is damaged ({type(exc).__name__}: {exc}); "
                             "it does not describe the run's layers and settings as gradsight writes them.") from None
    from .. import bus

    bus.add_recording(rec)  # the JupyterLab panel lists it next to the watchers
    return rec


def _tuples(df: pd.DataFrame) -> pd.DataFrame:
    """List columns (``affected``) come back from Parquet as arrays; findings hold tuples."""
    for c in df.columns:
        if df[c].dtype == object and len(df) and isinstance(df[c].iloc[0], np.ndarray):
            df[c] = df[c].map(tuple)
    return df


class Recording(RunQueries):
    """The read side of a Watcher, on a recording directory. Create it with :func:`gradsight.open`."""

    def __init__(self, root: Path, manifest: dict[str, Any], poll_seconds: float = POLL_SECONDS):
        self.root = root
        self.manifest = manifest
        self.name = str(manifest.get("name", root.name))
        self.bins = int(manifest["bins"])
        self.every = int(manifest.get("every", 1))
        self.histogram_every = int(manifest.get("histogram_every", 10))
        layers = manifest["layers"]
        names = [str(entry["name"]) for entry in layers]
        self._run = RunHistory(names, [str(entry["type"]) for entry in layers], self.bins,
                               param_counts=[int(entry.get("params", 0)) for entry in layers], name=self.name,
                               histogram_every=self.histogram_every)
        self._loader = Loader(root, names)
        self._findings = None
        self._polled = 0.0
        self.poll_seconds = poll_seconds
        chunks = manifest.get("chunks") or {}
        self._stale_after = max(10.0, 20 * float(chunks.get("seconds") or 0.5))
        self._closed = manifest.get("state") == "closed"
        self._lock = threading.Lock()  # a dashboard follows from its own thread
        self.version = 0  # counts the looks that found something new (what a follower redraws on)
        self.detached = False  # close() was called: followers stop, the panel drops it
        self.refresh()

    # --- following --------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """True while the writer is still appending (its process alive, the manifest recently touched)."""
        if self.detached:
            return False
        self._look_if_due()
        if self._closed:
            return False
        return writer_alive(self.manifest, self.root, self._stale_after)

    def refresh(self) -> bool:
        """Read what the writer added since the last look; True if anything was new."""
        with self._lock:
            self._polled = time.monotonic()
            if not self._closed:
                self.manifest = read_manifest(self.root)
                self._closed = self.manifest.get("state") == "closed"
            update = self._loader.poll(closed=self._closed)
            if update.findings is not None:
                self._findings = _tuples(update.findings)
            ingest(self._run, update)
            self.version += bool(update)
            return bool(update)

    @property
    def _history(self) -> RunHistory:
        """What the queries read: brought up to date first while the run is being written."""
        self._look_if_due()
        return self._run

    def _look_if_due(self) -> None:
        if not self._closed and time.monotonic() - self._polled >= self.poll_seconds:
            self.refresh()

    def close(self) -> None:
        """Stop following this recording: ``live`` turns False, so a dashboard stops redrawing, and the
        panel drops it and stops polling it. The files stay; what was read stays queryable."""
        if self.detached:
            return
        self.detached = True
        from .. import bus

        bus.discard_recording(self)
        bus.publish("close", self)

    @property
    def closed(self) -> bool:
        """True once the writer finished (or stopped: a crashed run is closed too)."""
        return not self.live

    @property
    def problems(self) -> list[str]:
        """Damaged chunks that were skipped, by file name."""
        return list(self._loader.problems)

    @property
    def step_count(self) -> int:
        return int(self.last_step) + 1 if self.last_step is not None else 0

    def _findings_frame(self) -> pd.DataFrame:
        if self._findings is None:
            from ..detectors.finding import FindingLog

            return FindingLog().frame()
        return self._findings.copy()

    # --- display and export -------------------------------------------------------------------
    def dashboard(self):
        """The ipywidgets dashboard; while the run is ``live`` it redraws as new steps arrive."""
        from ..widgets.dashboard import Dashboard
        from .follow import follow

        dash = Dashboard(self)
        if self.live:
            follow(self, dash)
        return dash

    def save(self, path) -> None:
        """Copy what this recording holds into a new recording directory."""
        from .save import save

        save(self, path, hist_kinds=tuple(self.manifest["hist_kinds"]))

    def _repr_html_(self) -> str:
        from ..widgets.summary_html import watcher_html  # the watcher's summary: same read API

        return watcher_html(self)

    def __repr__(self) -> str:
        state = "live" if self.live else self.manifest.get("state", "?")
        return (f"<gradsight.Recording {self.name!r} at {str(self.root)!r}: {len(self.layer_names)} layers, "
                f"{self.step_count} steps, {state}>")
