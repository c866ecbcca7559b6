"""One rank's part of a recording: its manifest and files, replayed into the history a watcher keeps.

A run of one process is one shard. A torch.distributed job writes one shard per rank (rank 0 in
the recording's directory, rank r in ``ranks/<r>/``): each rank's writer appends on its own, so
ranks never wait for each other and a rank that dies takes only its own last chunk with it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..records.history import DecimatingStore
from ..records.run_history import RunHistory
from ..warnings import GradsightWarning
from .format import RANK_STEP_COLUMNS, RecordingError
from .ingest import ingest
from .loader import Loader
from .manifest import read_manifest, stale_after, writer_alive


def _tuples(df: pd.DataFrame) -> pd.DataFrame:
    """List columns (``affected``) come back from Parquet as arrays; findings hold tuples."""
    for c in df.columns:
        if df[c].dtype == object and len(df) and isinstance(df[c].iloc[0], np.ndarray):
            df[c] = df[c].map(tuple)
    return df


def _identity(manifest: dict[str, Any]) -> tuple:
    """What tells one run from another written later into the same directory."""
    w = manifest.get("writer") or {}
    return manifest.get("created"), w.get("pid"), w.get("host")


class Shard:
    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        self.rank = int(manifest.get("rank", 0))
        self.name = str(manifest.get("name", root.name))
        self.bins = int(manifest["bins"])
        self.histogram_every = int(manifest.get("histogram_every", 10))
        layers = manifest["layers"]
        names = [str(entry["name"]) for entry in layers]
        self.run = RunHistory(names, [str(entry["type"]) for entry in layers], self.bins,
                              param_counts=[int(entry.get("params", 0)) for entry in layers], name=self.name,
                              histogram_every=self.histogram_every)
        self.loader = Loader(root, names)
        # this rank's step_s, allreduce_s, busy_s: thinned exactly as run.scalars (same appends)
        self.rank_scalars = DecimatingStore(self.run.scalars.capacity, (len(RANK_STEP_COLUMNS),), dtype=np.float64)
        self.findings: pd.DataFrame | None = None
        self.ranks: pd.DataFrame | None = None
        self.stale_after = stale_after(manifest)
        self.closed = manifest.get("state") == "closed"
        self.replaced = False  # the directory now holds another run: reading stopped

    def poll(self) -> bool:
        """Read what this shard's writer added since the last look; True if anything was new. A directory
        that is gone or holds another run now (deleted and recorded into again) stops the reading: what
        was read stays, and it is never mixed with the new run's steps."""
        if self.replaced:
            return False
        if not self.closed:
            manifest = self._current()
            if manifest is None:
                return False
            self.manifest = manifest
            self.closed = self.manifest.get("state") == "closed"
        try:
            up = self.loader.poll(closed=self.closed)
        except OSError:  # the directory went away while we read
            return False
        if not self.closed and self._current() is None:  # replaced while we read: these rows may be the new run's
            return False
        if up.findings is not None:
            self.findings = _tuples(up.findings)
        if up.ranks is not None:
            self.ranks = up.ranks
        ingest(self.run, up)
        for s, row in zip(up.steps, up.rank_scalars, strict=True):
            self.rank_scalars.append(int(s), row)
        return bool(up)

    def _current(self) -> dict[str, Any] | None:
        """The manifest now, if it is still this run's (None: missing for now, or another run's)."""
        try:
            manifest = read_manifest(self.root)
        except (RecordingError, OSError):  # deleted, or being written again: nothing new this look
            return None
        if _identity(manifest) == _identity(self.manifest):
            return manifest
        self.replaced = True
        w = manifest.get("writer") or {}
        note = (f"gradsight: {str(self.root)!r} now holds another run (started by process {w.get('pid')} on "
                f"{w.get('host')}); this Recording keeps the {self.last_step + 1} steps it read of the earlier one "
                f"and stops following. Open the path again (gs.open) to see the new run.")
        self.loader.problems.append(note)
        warnings.warn(note, GradsightWarning, stacklevel=5)
        return None

    def alive(self) -> bool:
        """The writer still appends (see manifest.writer_alive)."""
        return not self.closed and not self.replaced and writer_alive(self.manifest, self.root, self.stale_after)

    @property
    def last_step(self) -> int:
        steps, _ = self.run.scalars.valid()
        return int(steps[-1]) if len(steps) else -1
