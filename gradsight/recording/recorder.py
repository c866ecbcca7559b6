"""``gs.watch(model, record=path)``: the watcher's side of streaming a recording.

Called from the step close with the record and metrics the watcher already computed.
A record is queued one step late, because ``w.step(loss=...)`` may still set the loss of
the step that ``optimizer.step()`` just closed. Everything here is O(1) per step except
the ``findings()`` snapshot taken every ``flush_seconds``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..records.metrics import LAYER_METRICS
from ..records.queries import RANK_METRICS
from ..records.run_history import STEP_COLUMNS
from ..records.unit_history import WINDOW
from ..warnings import GradsightWarning
from .format import (
    FINDINGS,
    LATEST,
    MANIFEST,
    RANK_STEP_COLUMNS,
    RANKS,
    SHARDS,
    TABLES,
    RecordingError,
    shard_root,
    temp_name,
)
from .manifest import HOST, new_manifest, read_manifest, state_of
from .writer import FLUSH_SECONDS, FLUSH_STEPS, QUEUE_STEPS, RecordingWriter

_WRITING: dict[Path, str] = {}  # directories this process is streaming into -> watcher name


def prepare_directory(path: Any, where: str, rank: int = 0, world_size: int = 1) -> Path:
    """A directory to write a new recording into (rank ``rank``'s shard of a torch.distributed job):
    created, empty, or an earlier recording of this same process (a re-run notebook cell), which
    is replaced. Rank 0 of a job leaves ``ranks/`` (the other ranks' shards) to their writers; rank
    r >= 1 refuses a path whose top directory holds another run (a single process, another world size)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{where}: the recording path must be a str or Path; got {type(path).__name__}.")
    # absolute now: a relative path must keep naming this directory after an os.chdir (a notebook's %cd)
    top = Path(path).expanduser().absolute()
    root = shard_root(top, rank)
    others = {SHARDS} if rank == 0 and world_size > 1 else set()
    if root.resolve() in _WRITING:
        raise RecordingError(f"{where}: {str(root)!r} is being recorded right now by watcher "
                             f"{_WRITING[root.resolve()]!r} in this process. Pass another path, or close that "
                             "watcher first (w.close()).")
    shard = f"; rank {rank}'s shard {str(root)!r}" if rank else ""
    taken = (f"Pass a new path (e.g. record='{top}-2' in every rank) or delete {str(top)!r} first "
             "(shutil.rmtree).")
    try:
        if rank and (top / MANIFEST).is_file():
            old = _manifest_or_none(top)
            if old is not None and int(old.get("world_size", 1)) != world_size:
                raise RecordingError(f"{where}: {str(top)!r} already holds another run ({_describe(old, top)}, "
                                     f"world size {old.get('world_size', 1)}), not this job of {world_size} ranks: "
                                     f"rank {rank} would write its shard into it. {taken}")
        if root.exists() and not root.is_dir():
            raise RecordingError(f"{where}: {str(root)!r} is a file; a recording is a directory. Pass a new "
                                 "directory path, e.g. 'runs/exp1'.")
        if root.is_dir() and any(not e.startswith(".") and e not in others for e in os.listdir(root)):
            old = _manifest_or_none(root)
            if old is None:
                raise RecordingError(f"{where}: {str(root)!r} is not empty and is not a gradsight recording; "
                                     "refusing to write into it. Pass a new directory path.")
            writer = old.get("writer") or {}
            if writer.get("pid") != os.getpid() or writer.get("host") != HOST:
                raise RecordingError(f"{where}: {str(top)!r} already holds a recording ({_describe(old, root)}"
                                     f"{shard}). {taken}")
            for t in TABLES:  # this process wrote it: a re-run cell records afresh
                shutil.rmtree(root / t, ignore_errors=True)
            for f in (LATEST, FINDINGS, RANKS, MANIFEST):
                (root / f).unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        probe = root / temp_name("probe", str(os.getpid()))
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:  # read-only, a file where a directory should be, no permission
        raise RecordingError(f"{where}: cannot write a recording in {str(root)!r} ({type(exc).__name__}: "
                             f"{exc.strerror or exc}). Pass a directory this process can create and write "
                             "(e.g. under your home or the job's output directory).") from None
    return root


def _manifest_or_none(root: Path) -> dict[str, Any] | None:
    try:
        return read_manifest(root, "")
    except RecordingError:
        return None


def _describe(manifest: dict[str, Any], root: Path) -> str:
    """The old run in a refusal: its name and whether it is closed, still written, or ended early."""
    writer = manifest.get("writer") or {}
    state = state_of(manifest, root)
    if state == "live":
        state = f"still being recorded by process {writer.get('pid')} on {writer.get('host')}"
    elif state == "ended early":
        state = "ended early: its writer stopped without closing it"
    return f"{manifest.get('name')!r}, {state}"


def manifest_for(q: Any, source: str, flush_steps: int, flush_seconds: float, units_window: int,
                 hist_kinds: tuple[str, ...], rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    layers = q.layers()
    return new_manifest(rank=rank, world_size=world_size,
        name=str(q.name), layers=[{"name": str(n), "type": str(t), "params": int(p)}
                                  for n, t, p in zip(layers["layer"], layers["type"], layers["params"], strict=True)],
        bins=int(q.bins), every=int(q.every), histogram_every=int(q.histogram_every), hist_kinds=hist_kinds,
        layer_metrics=LAYER_METRICS, step_columns=STEP_COLUMNS, source=source, flush_steps=flush_steps,
        flush_seconds=flush_seconds, units_window=units_window)


@dataclass(frozen=True)
class RecordTo:
    """Where and how often ``gs.watch(model, record=...)`` writes: a chunk every ``flush_steps``
    steps or ``flush_seconds`` seconds, whichever comes first. A plain path means the defaults
    (100 steps, 0.5 s): a follower sees new steps a few times a second, and a process killed
    at any moment loses at most the last chunk."""

    path: str | os.PathLike
    flush_steps: int = FLUSH_STEPS
    flush_seconds: float = FLUSH_SECONDS

    def __post_init__(self):
        _check_flush(self.flush_steps, self.flush_seconds)


def start(watcher: Any, record: Any, *, hist_kinds: tuple[str, ...]) -> StreamRecorder:
    target = record if isinstance(record, RecordTo) else RecordTo(record)
    return StreamRecorder(watcher, target.path, hist_kinds=hist_kinds, flush_steps=target.flush_steps,
                          flush_seconds=target.flush_seconds)


class StreamRecorder:
    """Streams one watcher's steps into a recording directory."""

    def __init__(self, watcher: Any, path: Any, *, hist_kinds: tuple[str, ...], units_window: int = WINDOW,
                 flush_steps: int = FLUSH_STEPS, flush_seconds: float = FLUSH_SECONDS,
                 queue_steps: int = QUEUE_STEPS):
        _check_flush(flush_steps, flush_seconds)
        self.rank, self.world_size = int(watcher.rank), int(watcher.world_size)
        self.root = prepare_directory(path, "gs.watch(record=...)", self.rank, self.world_size)
        _WRITING[self.root.resolve()] = str(watcher.name)
        self._watcher = watcher
        manifest = manifest_for(watcher, "stream", flush_steps, flush_seconds, units_window, hist_kinds,
                                self.rank, self.world_size)
        self.writer = RecordingWriter(self.root, manifest, names=watcher.layer_names, hist_kinds=hist_kinds,
                                      bins=watcher.bins, flush_steps=flush_steps, flush_seconds=flush_seconds,
                                      queue_steps=queue_steps, units_window=units_window)
        self.flush_seconds = flush_seconds
        self.stride = 1
        self.dropped = 0
        self._seen = 0
        self._pending: tuple | None = None
        self._next_snapshot = time.monotonic()
        self._findings_fp: tuple | None = None  # the findings last handed to the writer
        self.closed = False
        atexit.register(self.close)

    def on_step(self, rec: Any, metrics: dict) -> None:
        prev, self._pending = self._pending, (rec, metrics, self._rank_row(rec.step))
        if prev is not None:
            self._enqueue(prev)
        now = time.monotonic()
        if now >= self._next_snapshot:
            self._next_snapshot = now + self.flush_seconds
            self._snapshot()

    def _rank_row(self, step: int) -> np.ndarray | None:
        """This rank's RANK_STEP_COLUMNS at ``step`` (exchanged just before), in a job with a cross-rank part."""
        row = self._watcher._rank_scalars(step) if self.world_size > 1 else None
        return None if row is None else np.array([row[RANK_METRICS.index(m)] for m in RANK_STEP_COLUMNS])

    def _snapshot(self) -> None:
        # the findings table costs ~8 ms to build on the training thread (pandas): only when the
        # findings changed (a healthy run: never); a job's cross-rank findings are not fingerprinted
        fp = None if self.world_size > 1 else self._watcher._detectors.log.fingerprint()
        if fp is not None and fp == self._findings_fp:
            return
        self._findings_fp = fp
        ranks = None
        if self.world_size > 1:
            try:
                ranks = self._watcher.ranks()
            except ValueError:
                ranks = None
        self.writer.set_findings(self._watcher.findings(), ranks)

    def _enqueue(self, item: tuple) -> None:
        self._seen += 1
        if (self._seen - 1) % self.stride:
            self.dropped += 1
            return
        if self.writer.put(item):
            return
        self.dropped += 1
        self.stride *= 2
        if self.stride == 2:
            warnings.warn(f"gradsight: the recording {str(self.root)!r} cannot keep up with training (the disk is "
                          f"slower than the steps); from step {item[0].step} it keeps every 2nd step (every 4th, "
                          "... if it still falls behind). Training is not slowed. (Reported once.)",
                          GradsightWarning, stacklevel=2)

    def close(self) -> None:
        """Queue the held-back step, write the final tables, mark the recording closed."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        _WRITING.pop(self.root.resolve(), None)
        try:
            if self._pending is not None:
                self._enqueue(self._pending)
                self._pending = None
            self._snapshot()
        finally:
            self.writer.close(thinned={"stride": self.stride, "dropped_steps": self.dropped})


def _check_flush(flush_steps: Any, flush_seconds: Any) -> None:
    if isinstance(flush_steps, bool) or not isinstance(flush_steps, int) or flush_steps < 1:
        raise ValueError(f"gradsight: flush_steps must be a positive integer (a chunk every n steps); "
                         f"got {flush_steps!r}.")
    if isinstance(flush_seconds, bool) or not isinstance(flush_seconds, (int, float)) or not flush_seconds > 0:
        raise ValueError(f"gradsight: flush_seconds must be a positive number of seconds; got {flush_seconds!r}.")
