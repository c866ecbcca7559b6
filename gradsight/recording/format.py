"""The on-disk layout of a recording: names, versions, tables and errors (docs/recording-format.md).

A recording is a directory::

    manifest.json            what the run is (layers, settings, format version, writer state)
    steps/L00-<first>-<last>.parquet     one row per step (loss, lr, timings, total gradient norm)
    layers/L00-<first>-<last>.parquet    one row per (step, layer): the per-layer metrics
    histograms/L00-<first>-<last>.parquet one row per (step, layer, of)
    units/L00-<first>-<last>.parquet     one row per (step, layer): per-unit max output
    latest.parquet           the newest step's per-layer values, full precision, with dtypes
    findings.parquet         what the detectors found (rewritten whole as it changes)
    ranks.parquet            (torch.distributed jobs) the per-rank table ``w.ranks()``
    ranks/<r>/               (torch.distributed jobs) rank r's shard, r >= 1: a recording of its own;
                             rank 0's shard is the directory itself, so a 1.0 reader opens it

Every file is written to a dot-name first and moved into place with ``os.replace``; a
``steps`` chunk is written after the ``layers`` chunk of the same name, so a steps file is
the commit mark of its chunk. Dot-names are also what pyarrow's dataset reader skips, so
``pandas.read_parquet("run/layers")`` reads a whole table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FORMAT_NAME = "gradsight-recording"
FORMAT_VERSION = (1, 1)  # (major, minor): a reader opens any minor of its major
# The first gradsight version that reads each major (named in the error for newer files).
READ_BY = {1: "0.1.0"}
MANIFEST = "manifest.json"
LATEST = "latest.parquet"
FINDINGS = "findings.parquet"
RANKS = "ranks.parquet"
SHARDS = "ranks"  # the directory of the shards of ranks 1.. of a torch.distributed job
RANK_STEP_COLUMNS = ("step_s", "allreduce_s", "busy_s")  # steps/ columns of a job's shards (1.1)
STEPS, LAYERS, HISTOGRAMS, UNITS = "steps", "layers", "histograms", "units"
TABLES = (STEPS, LAYERS, HISTOGRAMS, UNITS)

_CHUNK = re.compile(r"^L(\d{2})-(\d{12})-(\d{12})\.parquet$")


class RecordingError(ValueError):
    """A recording that cannot be opened or written as asked; the message says what to do."""


class RecordingNotFound(RecordingError, FileNotFoundError):
    """The path does not exist."""


class RecordingVersionError(RecordingError):
    """Written by a newer gradsight whose format this version cannot read."""


@dataclass(frozen=True, order=True)
class ChunkName:
    """A chunk file's identity: decimation level and the first and last step it holds.

    Level 0 holds every step that was written; level k >= 1 files were merged from two
    level k-1 files keeping every other step (level 1: merged, not thinned).
    """

    first: int
    last: int
    level: int

    @property
    def file(self) -> str:
        return f"L{self.level:02d}-{self.first:012d}-{self.last:012d}.parquet"

    @staticmethod
    def parse(name: str) -> ChunkName | None:
        m = _CHUNK.match(name)
        return ChunkName(int(m.group(2)), int(m.group(3)), int(m.group(1))) if m else None

    def covers(self, other: ChunkName) -> bool:
        """True when this chunk replaces ``other`` (it was merged from it, at least)."""
        if self == other:
            return False
        inside = self.first <= other.first and other.last <= self.last
        return inside and (self.level > other.level or (self.level == other.level and self.last - self.first
                                                         > other.last - other.first))


def shard_root(root: Path, rank: int) -> Path:
    """Where rank ``rank`` of a job writes: rank 0 in ``root`` itself, rank r in ``root/ranks/<r>``."""
    return root if rank == 0 else root / SHARDS / str(rank)


def temp_name(final: str, token: str) -> str:
    """The dot-name a file is written under before ``os.replace`` moves it into place."""
    return f".tmp-{token}-{final}"
