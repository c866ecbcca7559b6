"""Chunk files: atomic writes, listing what a reader should read, and merging old chunks.

Merging is how a long run stays small on disk: level-0 chunks (every step written) are
merged into one level-1 chunk once they hold ``capacity`` steps; two chunks of level k
merge into one of level k+1 that keeps every other step. Old steps get coarser and the
number of stored steps grows with the logarithm of the run length (docs/recording-format.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from .format import ChunkName, RecordingError, temp_name


class CorruptChunk(RecordingError):
    """A chunk file that exists but cannot be read (truncated, damaged)."""

    def __init__(self, file: Path, why: str):
        super().__init__(f"gradsight: recording chunk {str(file)!r} cannot be read ({why}); it is skipped and "
                         "the rest of the recording opens. Delete the file to silence this message.")
        self.file = file


def write_table(path: Path, table) -> int:
    """Write ``table`` to ``path`` atomically; return its size in bytes."""
    import pyarrow.parquet as pq

    tmp = path.parent / temp_name(path.name, str(os.getpid()))
    # dictionary encoding only for the name columns and statistics only for steps: on float
    # columns both cost time (5-10x per chunk, measured) and save nothing
    pq.write_table(table, tmp, compression="zstd", use_dictionary=["layer", "of"], write_statistics=["step"])
    size = tmp.stat().st_size
    os.replace(tmp, path)
    return size


def read_table(path: Path):
    """The table in ``path``; FileNotFoundError if it vanished (merged away), CorruptChunk if damaged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        if not path.exists():
            raise FileNotFoundError(path) from None
        raise CorruptChunk(path, f"{type(exc).__name__}: {exc}") from None


def listing(directory: Path) -> list[ChunkName]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(c for n in names if (c := ChunkName.parse(n)) is not None)


def current(chunks: Sequence[ChunkName]) -> list[ChunkName]:
    """The chunks to read: those no merged chunk replaces (left over after a crash mid-merge)."""
    return [c for c in chunks if not any(o.covers(c) for o in chunks)]


def merge(root: Path, tables: Sequence[str], inputs: Sequence[ChunkName], level: int, thin: bool) -> ChunkName:
    """Merge ``inputs`` of every table in ``tables`` (written in that order, the commit table
    last) into one chunk of ``level``; ``thin`` keeps every other step. Inputs are removed
    commit table first, so no reader finds a committed chunk with a missing part."""
    import pyarrow as pa
    import pyarrow.compute as pc

    merged = {t: pa.concat_tables([read_table(root / t / c.file) for c in inputs if (root / t / c.file).exists()],
                                  promote_options="default") for t in tables}
    keep = None
    if thin:
        steps = sorted(set().union(*(pc.unique(merged[t]["step"]).to_pylist() for t in tables)))
        keep = pa.array(steps[::2], type=pa.int64())
    out = ChunkName(min(c.first for c in inputs), max(c.last for c in inputs), level)
    for t in tables:
        table = merged[t]
        if keep is not None:
            table = table.filter(pc.is_in(table["step"], value_set=keep))
        write_table(root / t / out.file, table)
    for t in reversed(tables):
        for c in inputs:
            if c != out:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(root / t / c.file)
    return out
