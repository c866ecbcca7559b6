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
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from ..distributed.cross_rank import CROSS_KINDS
from ..records.queries import RunQueries
from ..records.run_history import STEP_COLUMNS, RunHistory
from ..warnings import GradsightWarning
from .format import MANIFEST, RANK_STEP_COLUMNS, RecordingError, shard_root
from .manifest import read_manifest, resolve
from .shard import Shard

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


class Recording(RunQueries):
    """The read side of a Watcher, on a recording directory. Create it with :func:`gradsight.open`."""

    def __init__(self, root: Path, manifest: dict[str, Any], poll_seconds: float = POLL_SECONDS):
        self.root = root
        first = Shard(root, manifest)
        self._rank = first.rank
        self._world = max(1, int(manifest.get("world_size", 1)))
        self._shards: dict[int, Shard] = {first.rank: first}
        # a job's top directory (rank 0) finds the other ranks' shards; a shard opened alone is just itself
        self._expected = range(self._world) if first.rank == 0 else range(first.rank, first.rank + 1)
        self._notes: dict[tuple, str] = {}  # (kind, rank) -> what gs.open says about a shard, once
        self.name = first.name
        self.bins = first.bins
        self.every = int(manifest.get("every", 1))
        self.histogram_every = first.histogram_every
        self._polled = 0.0
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()  # a dashboard follows from its own thread
        self.version = 0  # counts the looks that found something new (what a follower redraws on)
        self.detached = False  # close() was called: followers stop, the panel drops it
        self.refresh()

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest of the shard the queries show (the recording's own, for a run of one process)."""
        return self._shards[self._rank].manifest

    @property
    def _closed(self) -> bool:
        return all(s.closed for s in list(self._shards.values())) and len(self._shards) == len(self._expected)

    # --- following --------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """True while a writer is still appending (its process alive, the manifest recently touched)."""
        if self.detached:
            return False
        self._look_if_due()
        return any(s.alive() for s in list(self._shards.values()))

    def refresh(self) -> bool:
        """Read what the writers added since the last look; True if anything was new."""
        with self._lock:
            self._polled = time.monotonic()
            self._find_shards()
            new = False
            for shard in list(self._shards.values()):
                new = shard.poll() or new
            if self._world > 1:
                self._check_shards()
            self.version += new
            return new

    def _find_shards(self) -> None:
        for r in self._expected:
            if r in self._shards:
                continue
            root = shard_root(self.root, r)
            if not (root / MANIFEST).exists():
                continue  # not started yet, or never: _check_shards says so once the run stopped
            try:
                self._shards[r] = Shard(root, read_manifest(root))
            except RecordingError as exc:
                self._note(("bad", r), f"gradsight.open: rank {r}'s shard {str(root)!r} cannot be read: {exc}")

    def _check_shards(self) -> None:
        """Say once, by rank, which shard ended early (its writer gone without closing it) or is missing."""
        alive = {r: s.alive() for r, s in list(self._shards.items())}
        last = max((s.last_step for s in list(self._shards.values())), default=-1)
        for r, shard in list(self._shards.items()):
            if not shard.closed and not alive[r]:
                w = shard.manifest.get("writer") or {}
                self._note(("early", r), f"gradsight.open: rank {r}'s shard {str(shard.root)!r} ended early: its "
                           f"writer (pid {w.get('pid')} on {w.get('host')}) stopped at step {shard.last_step} without "
                           f"closing the recording (killed or crashed; the run reached step {last}). What it wrote "
                           "until then opens; its last chunk may be lost.")
        if not any(alive.values()):
            for r in self._expected:
                if r not in self._shards:
                    self._note(("missing", r), f"gradsight.open: rank {r} of {self._world} has no shard "
                               f"({str(shard_root(self.root, r))!r} does not exist): that rank did not record "
                               "(it never called gs.watch(..., record=...), or died before its first step).")

    def _note(self, key: tuple, message: str) -> None:
        if key not in self._notes:
            self._notes[key] = message
            warnings.warn(message, GradsightWarning, stacklevel=4)

    @property
    def _history(self) -> RunHistory:
        """What the queries read: brought up to date first while the run is being written."""
        self._look_if_due()
        return self._shards[self._rank].run

    def _look_if_due(self) -> None:
        if not self._closed and time.monotonic() - self._polled >= self.poll_seconds:
            self.refresh()

    # --- ranks of a torch.distributed job ----------------------------------------------------
    @property
    def rank(self) -> int:
        """The rank whose layers the queries without ``rank=`` show: 0 (the job's top directory)."""
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world

    def _shard(self, rank: int, what: str) -> Shard:
        self._look_if_due()
        shard = self._shards.get(rank)
        if shard is None:
            raise ValueError(f"gradsight: {what}: rank {rank} has no shard in {str(self.root)!r}"
                             + (" (open the job's top directory to see every rank)." if rank not in self._expected
                                else f": {str(shard_root(self.root, rank))!r} does not exist (yet)."))
        return shard

    def _history_of(self, rank: int, what: str = "history") -> RunHistory:
        return self._shard(rank, f"{what}(rank={rank})").run

    def _rank_history(self, metric: str, rank: int) -> pd.DataFrame:
        shard = self._shard(rank, f"history({metric!r}, rank={rank})")
        if metric in RANK_STEP_COLUMNS:
            steps, data = shard.rank_scalars.valid()
            values = data[:, RANK_STEP_COLUMNS.index(metric)]
        else:  # forward_s, backward_s: step columns of every shard
            steps, data = shard.run.scalars.valid()
            values = data[:, STEP_COLUMNS.index(metric)]
        return pd.DataFrame({metric: values}, index=pd.Index(steps, name="step"))

    def ranks(self) -> pd.DataFrame:
        """The per-rank table, as the rank that recorded the most steps last wrote it; ``findings``
        counts every rank's own findings too (each shard holds its rank's), ``self`` marks ``rank``."""
        if self._world < 2:
            return super().ranks()
        self._look_if_due()
        held = [s for s in list(self._shards.values()) if s.ranks is not None and len(s.ranks)]
        if not held:
            raise ValueError(f"gradsight: ranks(): {str(self.root)!r} holds no per-rank table: its ranks ran "
                             "without the cross-rank part (distributed=False, or they did not all watch the same "
                             "model), or no step was written yet.")
        df = max(held, key=lambda s: (s.last_step, -s.rank)).ranks.copy()
        findings = self.findings()
        serious = findings[findings["severity"].isin(["error", "warning"])] if "rank" in findings else findings[:0]
        counts = serious.groupby("rank").size() if len(serious) else pd.Series(dtype="int64")
        df["findings"] = [int(counts.get(r, 0)) for r in df["rank"]]
        df["self"] = df["rank"] == self._rank
        return df

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
    def state(self) -> str:
        """"live" while a writer appends, "ended early" when a writer stopped without closing its shard
        (killed or crashed), else "closed" (a rank that never recorded is in ``problems``)."""
        if self.live:
            return "live"
        return "closed" if all(s.closed for s in list(self._shards.values())) else "ended early"

    @property
    def problems(self) -> list[str]:
        """Damaged chunks that were skipped, by file name; shards that ended early or are missing, by rank."""
        out = [p for r in sorted(self._shards) for p in self._shards[r].loader.problems]
        return out + list(self._notes.values())

    @property
    def step_count(self) -> int:
        return int(self.last_step) + 1 if self.last_step is not None else 0

    def _findings_frame(self, all: bool = False) -> pd.DataFrame:  # noqa: A002 - w.findings(all=True)
        """Every rank's own findings, and the cross-rank ones once (every rank holds the same: they are
        taken from the shard that recorded the most steps), in the watcher's order."""
        from ..detectors.finding import SEVERITY_RANK, FindingLog

        frames = {r: s.findings for r, s in sorted(list(self._shards.items())) if s.findings is not None}
        if not frames:
            return FindingLog().frame()
        if self._world < 2:
            return next(iter(frames.values())).copy()
        fresh = max(frames, key=lambda r: (self._shards[r].last_step, -r))
        parts = [df if r == fresh else df[~df["kind"].isin(CROSS_KINDS)] for r, df in frames.items()]
        df = pd.concat([p for p in parts if len(p)] or [frames[fresh][:0]], ignore_index=True)
        if len(df) < 2:
            return df
        index = self._shards[self._rank].run.index
        key = pd.DataFrame({"step": df["step"], "sev": df["severity"].map(SEVERITY_RANK).fillna(len(SEVERITY_RANK)),
                            "layer": df["layer"].map(index).fillna(len(index)),
                            "rank": df.get("rank", 0)})
        return df.loc[key.sort_values(["step", "sev", "layer", "rank"], kind="stable").index].reset_index(drop=True)

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
        """Copy what this recording shows into a new recording directory. Of a torch.distributed job's
        recording that is rank ``rank``'s layers with every rank's findings, saved as a run of one
        process (copy the directory to keep every rank's shard)."""
        from .save import save

        save(self, path, hist_kinds=tuple(self.manifest["hist_kinds"]), rank=0, world_size=1)

    def _repr_html_(self) -> str:
        from ..widgets.summary_html import watcher_html  # the watcher's summary: same read API

        return watcher_html(self)

    def __repr__(self) -> str:
        state = self.state
        return (f"<gradsight.Recording {self.name!r} at {str(self.root)!r}: {len(self.layer_names)} layers, "
                f"{self.step_count} steps, {state}>")
