"""Reading a recording incrementally: what is new since the last look, consistent at every look.

A chunk counts once its ``steps`` file exists (written last). Histograms and unit rows
are taken only up to the newest committed step, so a follower never shows a histogram of
a step whose metrics it has not read. Files merged away between listing and reading are
retried; a damaged file is reported by name and skipped.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..records.histogram import EXTRA_COUNTS
from ..records.metrics import LAYER_METRICS
from ..records.run_history import STEP_COLUMNS
from ..warnings import GradsightWarning
from . import chunks
from .format import FINDINGS, HISTOGRAMS, LATEST, LAYERS, RANK_STEP_COLUMNS, RANKS, STEPS, UNITS, ChunkName

RETRIES = 5


@dataclass
class Update:
    """What a look found: new rows (oldest first) and, when they changed, the snapshots."""

    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scalars: np.ndarray = field(default_factory=lambda: np.zeros((0, len(STEP_COLUMNS))))
    layer_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    layer_values: np.ndarray | None = None        # [n, len(LAYER_METRICS), L] float32
    hist: list[tuple[int, int, str, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    units: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    rank_scalars: np.ndarray = field(default_factory=lambda: np.zeros((0, len(RANK_STEP_COLUMNS))))
    latest: pd.DataFrame | None = None
    findings: pd.DataFrame | None = None
    ranks: pd.DataFrame | None = None

    def __bool__(self) -> bool:
        return bool(len(self.steps) or len(self.layer_steps) or self.hist or self.units
                    or self.latest is not None or self.findings is not None or self.ranks is not None)


class Loader:
    def __init__(self, root: Path, names: list[str]):
        self.root = root
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}
        self.hwm = {STEPS: -1, LAYERS: -1, HISTOGRAMS: -1, UNITS: -1}
        self.problems: list[str] = []
        self._bad: set[Path] = set()
        self._stamps: dict[str, tuple] = {}

    def poll(self, closed: bool) -> Update:
        for attempt in range(RETRIES):
            try:
                return self._poll(closed)
            except FileNotFoundError:  # a chunk was merged away while we read: look again
                if attempt == RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _poll(self, closed: bool) -> Update:
        up = Update()
        hwm = dict(self.hwm)
        committed = [c for c in chunks.current(chunks.listing(self.root / STEPS)) if c.last > min(hwm[STEPS],
                                                                                                   hwm[LAYERS])]
        steps, scalars, rank_scalars, lsteps, lvalues = [], [], [], [], []
        horizon = max(hwm[STEPS], hwm[LAYERS])
        for c in committed:
            try:
                st = self._read(STEPS, c)
                ly = self._read(LAYERS, c) if (self.root / LAYERS / c.file).exists() else None
            except chunks.CorruptChunk as exc:
                self._report(exc)
                continue
            horizon = max(horizon, c.last)
            s = st["step"].to_numpy()
            keep = s > hwm[STEPS]
            if keep.any():
                steps.append(s[keep])
                scalars.append(np.column_stack([st[f].to_numpy(zero_copy_only=False) for f in STEP_COLUMNS])[keep])
                rank_scalars.append(np.column_stack([st[f].to_numpy(zero_copy_only=False) if f in st.column_names
                                                     else np.full(len(s), np.nan) for f in RANK_STEP_COLUMNS])[keep])
                hwm[STEPS] = int(s[keep].max())
            if ly is not None and ly.num_rows:
                ls, lv = self._layer_rows(ly, hwm[LAYERS])
                if len(ls):
                    lsteps.append(ls)
                    lvalues.append(lv)
                    hwm[LAYERS] = int(ls.max())
        if steps:
            up.steps, up.scalars = np.concatenate(steps), np.concatenate(scalars).astype(np.float64)
            up.rank_scalars = np.concatenate(rank_scalars).astype(np.float64)
        if lsteps:
            up.layer_steps, up.layer_values = np.concatenate(lsteps), np.concatenate(lvalues)
        limit = np.iinfo(np.int64).max if closed else horizon
        up.hist, hwm[HISTOGRAMS] = self._side(HISTOGRAMS, hwm[HISTOGRAMS], limit, self._hist_rows)
        up.units, hwm[UNITS] = self._side(UNITS, hwm[UNITS], limit, self._unit_rows)
        up.latest = self._snapshot(LATEST, None if closed else max(hwm[STEPS], hwm[LAYERS]))
        up.findings = self._snapshot(FINDINGS)
        up.ranks = self._snapshot(RANKS)
        self.hwm = hwm
        return up

    def _read(self, table: str, c: ChunkName):
        path = self.root / table / c.file
        if path in self._bad:
            raise chunks.CorruptChunk(path, "reported before")
        return chunks.read_table(path)

    def _report(self, exc: chunks.CorruptChunk) -> None:
        if exc.file in self._bad:
            return
        self._bad.add(exc.file)
        self.problems.append(str(exc))
        warnings.warn(str(exc), GradsightWarning, stacklevel=4)

    def _layer_idx(self, table) -> np.ndarray:
        """Row -> layer index in the manifest's order (-1: a name the manifest lacks)."""
        import pyarrow as pa

        col = table["layer"].combine_chunks()
        if pa.types.is_dictionary(col.type):
            lookup = np.array([self.index.get(n, -1) for n in col.dictionary.to_pylist()] + [-1], dtype=np.int64)
            codes = col.indices.fill_null(len(col.dictionary)).to_numpy(zero_copy_only=False)
            return lookup[codes.astype(np.int64)]
        return np.array([self.index.get(v, -1) for v in col.to_pylist()], dtype=np.int64)

    def _layer_rows(self, ly, after: int) -> tuple[np.ndarray, np.ndarray]:
        s = ly["step"].to_numpy()
        keep = s > after
        if not keep.any():
            return np.zeros(0, np.int64), np.zeros((0, len(LAYER_METRICS), len(self.names)), np.float32)
        li = self._layer_idx(ly)[keep]
        s = s[keep]
        uniq, row = np.unique(s, return_inverse=True)
        out = np.full((len(uniq), len(LAYER_METRICS), len(self.names)), np.nan, dtype=np.float32)
        ok = li >= 0
        for k, m in enumerate(LAYER_METRICS):
            out[row[ok], k, li[ok]] = ly[m].to_numpy(zero_copy_only=False)[keep][ok]
        return uniq, out

    def _side(self, table: str, after: int, limit: int, rows_of) -> tuple[list, int]:
        out = []
        for c in chunks.current(chunks.listing(self.root / table)):
            if c.last <= after or c.first > limit:
                continue
            try:
                t = self._read(table, c)
            except chunks.CorruptChunk as exc:
                self._report(exc)
                continue
            s = t["step"].to_numpy()
            keep = (s > after) & (s <= limit)
            if keep.any():
                out += rows_of(t, keep)
        hwm = max([after] + [r[0] for r in out])
        return out, hwm

    def _hist_rows(self, t, keep) -> list:
        s = t["step"].to_numpy()[keep]
        li = self._layer_idx(t)[keep]
        of = np.asarray(t["of"].to_pylist(), dtype=object)[keep]
        edges = t["edges"].to_pylist()
        counts = t["counts"].to_pylist()
        # a column added in a later minor version (``sampled``, 1.1) reads as 0 in older recordings
        extra = np.column_stack([t[e].to_numpy() if e in t.column_names else np.zeros(t.num_rows, np.int64)
                                 for e in EXTRA_COUNTS])[keep]
        idx = np.nonzero(keep)[0]
        return [(int(s[j]), int(li[j]), str(of[j]), np.asarray(edges[i], np.float64), np.asarray(counts[i], np.int64),
                 extra[j]) for j, i in enumerate(idx) if li[j] >= 0]

    def _unit_rows(self, t, keep) -> list:
        s = t["step"].to_numpy()[keep]
        li = self._layer_idx(t)[keep]
        values = t["values"].to_pylist()
        idx = np.nonzero(keep)[0]
        return [(int(s[j]), int(li[j]), np.asarray(values[i], np.float32)) for j, i in enumerate(idx) if li[j] >= 0]

    def _snapshot(self, name: str, upto: int | None = None) -> pd.DataFrame | None:
        """The table if it changed since the last look; with ``upto``, only once the chunks up to
        its step were read (it is written after them), so ``layers()`` never runs ahead."""
        path = self.root / name
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._stamps.get(name) == stamp:
            return None
        try:
            df = chunks.read_table(path).to_pandas()
        except chunks.CorruptChunk as exc:
            self._report(exc)
            return None
        if upto is not None and len(df) and "step" in df.columns and int(df["step"].iloc[0]) > upto:
            return None  # the chunk it belongs to was committed after our listing: next look
        self._stamps[name] = stamp
        return df
