"""The background writer: a bounded queue in front of a thread that writes chunks.

The training thread only puts a reference into the queue (never waits). The thread turns
queued step records into Parquet chunks every ``flush_steps`` steps or ``flush_seconds``
seconds, whichever comes first, and merges old chunks so the recording stays small.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..records.metrics import LAYER_METRICS
from ..records.unit_history import WINDOW
from ..warnings import GradsightWarning
from . import chunks
from .format import FINDINGS, HISTOGRAMS, LATEST, LAYERS, RANKS, STEPS, TABLES, UNITS, ChunkName
from .manifest import touch, write_manifest
from .tables import RecordBatch, frame_table, latest_table

FLUSH_STEPS = 100        # a chunk at least every 100 steps ...
FLUSH_SECONDS = 0.5      # ... or every half second, so a reader follows a few times a second
QUEUE_STEPS = 256        # records waiting for the writer before it thins
LEVEL_BYTES = 4 * 2**20  # raw layer-metric bytes per merge level (sets the steps kept per level)
HIST_LEVEL_BYTES = 8 * 2**20
MAX_LEVEL0_FILES = 16    # small chunks of a slow run are merged before they pile up
_STOP = object()


def level_capacity(row_bytes: int, budget: int, lo: int, hi: int) -> int:
    """Steps per merge level for rows of ``row_bytes``: the budget's worth, within [lo, hi]."""
    return int(min(hi, max(lo, budget // max(1, row_bytes))))


class _Stream:
    """The chunks of one or more tables that share step ranges (``tables``: commit table last)."""

    def __init__(self, root: Path, tables: Sequence[str], capacity: int, window: int | None = None):
        self.root, self.tables, self.capacity, self.window = root, tuple(tables), capacity, window
        self.chunks: list[tuple[ChunkName, int]] = []  # (name, distinct steps), oldest first

    def write(self, parts: dict[str, Any], first: int, last: int, n_steps: int) -> int:
        name = ChunkName(first, last, 0)
        size = sum(chunks.write_table(self.root / t / name.file, parts[t]) for t in self.tables)
        self.chunks.append((name, n_steps))
        self._compact()
        return size

    def _merge(self, group: list[tuple[ChunkName, int]], level: int, thin: bool) -> None:
        out = chunks.merge(self.root, self.tables, [c for c, _ in group], level, thin)
        n = sum(k for _, k in group)
        pos = self.chunks.index(group[0])
        self.chunks = [c for c in self.chunks if c not in group]
        self.chunks.insert(pos, (out, (n + 1) // 2 if thin else n))

    def _compact(self) -> None:
        level0 = [c for c in self.chunks if c[0].level == 0]
        if self.window is not None:
            if len(level0) >= MAX_LEVEL0_FILES:
                self._merge(level0, 0, thin=False)
            self._prune()
            return
        if sum(k for _, k in level0) >= self.capacity:
            self._merge(level0, 1, thin=False)
        elif len(level0) >= MAX_LEVEL0_FILES:
            self._merge(level0, 0, thin=False)
        while True:  # the newest merged chunk stays out: the last `capacity` steps stay complete
            older = [c for c in self.chunks if c[0].level >= 1][:-1]
            levels = [c[0].level for c in older]
            twice = sorted({k for k in levels if levels.count(k) >= 2})
            if not twice:
                return
            pair = [c for c in older if c[0].level == twice[0]][:2]
            self._merge(pair, twice[0] + 1, thin=True)

    def _prune(self) -> None:
        """Window streams (unit activity) keep only the chunks that hold the last ``window`` steps."""
        total = 0
        for i in range(len(self.chunks) - 1, -1, -1):
            total += self.chunks[i][1]
            if total >= self.window:
                for old, _ in self.chunks[:i]:
                    for t in self.tables:
                        with contextlib.suppress(FileNotFoundError):
                            (self.root / t / old.file).unlink()
                self.chunks = self.chunks[i:]
                return


class RecordingWriter:
    """Writes one recording directory from a background thread.

    ``put(item)`` never blocks: it returns False when the queue is full. Items are
    ``(StepRecord, metrics)``; ``set_findings(frame)`` hands over the newest ``findings()``
    table, written at the next flush.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], *, names: Sequence[str], hist_kinds: Sequence[str],
                 bins: int, flush_steps: int = FLUSH_STEPS, flush_seconds: float = FLUSH_SECONDS,
                 queue_steps: int = QUEUE_STEPS, units_window: int = WINDOW, thread: bool = True,
                 capacity: int | None = None, hist_capacity: int | None = None):
        self.root = root
        self.manifest = manifest
        self.names = tuple(names)
        self.flush_steps = flush_steps
        self.flush_seconds = flush_seconds
        self.bytes_written = 0
        self.steps_written = 0
        self.error: str | None = None
        self.cpu_seconds = 0.0  # the writer thread's CPU time, once closed (benchmarks/recording.py)
        L = max(1, len(self.names))
        per_hist = L * len(hist_kinds) * ((2 * bins + 1) * 8 + 96)
        self.capacity = capacity or level_capacity(L * len(LAYER_METRICS) * 4 + 64, LEVEL_BYTES, 256, 16384)
        self.hist_capacity = hist_capacity or level_capacity(per_hist, HIST_LEVEL_BYTES, 16, 4096)
        self._main = _Stream(root, (LAYERS, STEPS), self.capacity)
        self._hist = _Stream(root, (HISTOGRAMS,), self.hist_capacity)
        self._units = _Stream(root, (UNITS,), 0, window=units_window)
        self._batch = RecordBatch(self.names, hist_kinds)
        self._new_batch = lambda: RecordBatch(self.names, hist_kinds)
        self._findings: Any = None
        self._ranks: Any = None
        self._findings_written: Any = None
        self._latest: dict | None = None
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_steps)
        for t in TABLES:
            (root / t).mkdir(parents=True, exist_ok=True)
        write_manifest(root, manifest)
        self._thread = None
        if thread:
            self._thread = threading.Thread(target=self._run, name=f"gradsight-recording:{root.name}", daemon=True)
            self._thread.start()

    # --- training thread ---------------------------------------------------------------------
    def put(self, item: Any) -> bool:
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            return False

    def add(self, rec, metrics) -> None:
        """Without a thread (``thread=False``): add a step and write a chunk when one is due."""
        self._batch.add(rec, metrics)
        if len(self._batch) >= self.flush_steps:
            self.flush()

    def set_findings(self, findings, ranks=None) -> None:
        """The newest ``findings()`` (and, in a torch.distributed job, ``ranks()``) tables."""
        with self._lock:
            self._findings = findings
            if ranks is not None:
                self._ranks = ranks

    def close(self, *, timeout: float = 30.0, **manifest_updates: Any) -> None:
        """Write everything queued, mark the manifest closed, stop the thread."""
        if self._thread is None:
            self._drain()
            self.flush()
        else:
            deadline = time.monotonic() + timeout
            while self._thread.is_alive():
                try:
                    self._queue.put(_STOP, timeout=0.1)
                    break
                except queue.Full:
                    if time.monotonic() > deadline:
                        break
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self.manifest.update(manifest_updates, state="closed", closed=time.time())
        write_manifest(self.root, self.manifest)

    # --- writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        deadline = time.monotonic() + self.flush_seconds
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._drain()
                self._guarded(self.flush)
                self.cpu_seconds = time.thread_time()
                return
            if item is not None:
                self._batch.add(*item)
            if len(self._batch) >= self.flush_steps or time.monotonic() >= deadline:
                self._guarded(self.flush)
                deadline = time.monotonic() + self.flush_seconds

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._batch.add(*item)

    def _guarded(self, fn) -> None:
        try:
            fn()
        except Exception as exc:  # a full disk must not kill the thread nor the training
            self._batch = self._new_batch()
            if self.error is None:
                warnings.warn(f"gradsight: writing the recording {str(self.root)!r} failed ({type(exc).__name__}: "
                              f"{exc}); training continues, the recording may miss steps (reported once).",
                              GradsightWarning, stacklevel=2)
            self.error = f"{type(exc).__name__}: {exc}"

    def flush(self) -> None:
        """Write the batch as one chunk per table (steps last: the commit), then the snapshots."""
        batch, self._batch = self._batch, self._new_batch()
        with self._lock:
            findings, self._findings = self._findings, None
            ranks, self._ranks = self._ranks, None
        if len(batch):
            parts = batch.tables()
            steps = [r.step for r, _ in batch.items]
            for stream, table in ((self._hist, HISTOGRAMS), (self._units, UNITS)):
                if table in parts:
                    s = parts[table]["step"].to_numpy()
                    self.bytes_written += stream.write(parts, int(s.min()), int(s.max()), len(set(s.tolist())))
            self.bytes_written += self._main.write(parts, min(steps), max(steps), len(steps))
            self.steps_written += len(steps)
            self._latest = batch.merge_latest(self._latest)
            last = batch.items[-1][0]
            dtypes = [last.dtypes.get(i, "") for i in range(len(self.names))]
            self.bytes_written += chunks.write_table(self.root / LATEST, latest_table(self.names, last.step, dtypes,
                                                                                    self._latest))
        if findings is not None and not (self._findings_written is not None and findings.equals(self._findings_written)):
            self.bytes_written += chunks.write_table(self.root / FINDINGS, frame_table(findings))
            self._findings_written = findings
        if ranks is not None:
            self.bytes_written += chunks.write_table(self.root / RANKS, frame_table(ranks))
        touch(self.root)
