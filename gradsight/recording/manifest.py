"""manifest.json: what a recording is, which format it uses, and whether its writer is alive.

The manifest is written when recording starts and again when it ends (``state``); while
the writer runs it touches the file's modification time every flush interval, which is
how a reader on another machine tells a live run from a crashed one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    READ_BY,
    RecordingError,
    RecordingNotFound,
    RecordingVersionError,
    temp_name,
)

MAX_MANIFEST_BYTES = 16 * 2**20
HOST = socket.gethostname()


def gradsight_version() -> str:
    from .._version import __version__

    return __version__


def new_manifest(*, name: str, layers: list[dict], bins: int, every: int, histogram_every: int,
                 hist_kinds: tuple[str, ...], layer_metrics: tuple[str, ...], step_columns: tuple[str, ...],
                 source: str, flush_steps: int, flush_seconds: float, units_window: int, rank: int = 0,
                 world_size: int = 1) -> dict[str, Any]:
    major, minor = FORMAT_VERSION
    return {
        "format": FORMAT_NAME, "format_version": f"{major}.{minor}", "read_by": READ_BY[major],
        "gradsight_version": gradsight_version(), "name": name, "source": source,
        "created": time.time(), "state": "recording", "closed": None,
        "writer": {"pid": os.getpid(), "host": HOST},
        "layers": layers, "bins": bins, "every": every, "histogram_every": histogram_every,
        "hist_kinds": list(hist_kinds), "layer_metrics": list(layer_metrics), "step_columns": list(step_columns),
        "chunks": {"steps": flush_steps, "seconds": flush_seconds}, "units_window": units_window,
        "thinned": {"stride": 1, "dropped_steps": 0}, "rank": rank, "world_size": world_size,
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    tmp = root / temp_name(MANIFEST, f"{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=1, allow_nan=False))
    os.replace(tmp, root / MANIFEST)


def touch(root: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(root / MANIFEST)


def resolve(path: Any, where: str = "gradsight.open") -> Path:
    """The recording directory ``path`` names (the directory, or its manifest.json)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{where} takes the path of a recording directory (str or Path); got {type(path).__name__}.")
    p = Path(path).expanduser().absolute()  # followed later: an os.chdir must not move it
    if not p.exists():
        raise RecordingNotFound(f"{where}: {str(p)!r} does not exist. Pass the directory given to "
                                f"gs.watch(..., record=...) or w.save(...); check the path and the working "
                                f"directory ({os.getcwd()}).")
    if p.is_file():
        if p.name == MANIFEST:
            return p.parent
        raise RecordingError(f"{where}: {str(p)!r} is a file, not a gradsight recording. A recording is a "
                             f"directory holding {MANIFEST} and Parquet tables; pass that directory.")
    return p


def read_manifest(root: Path, where: str = "gradsight.open") -> dict[str, Any]:
    """The validated manifest; clear errors for empty, foreign, corrupt and too-new directories."""
    file = root / MANIFEST
    if not file.exists():
        entries = [e for e in os.listdir(root) if not e.startswith(".")]
        if not entries:
            raise RecordingError(f"{where}: {str(root)!r} is an empty directory: no recording there (yet). If a "
                                 "script is about to record into it, open it after its first step.")
        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise RecordingError(f"{where}: {str(root)!r} is not a gradsight recording: it has no {MANIFEST} "
                             f"(it holds {shown}). Pass a directory written by gs.watch(..., record=...) or w.save().")
    if file.stat().st_size > MAX_MANIFEST_BYTES:
        raise RecordingError(f"{where}: {str(file)!r} is {file.stat().st_size:,} bytes, far larger than any "
                             "gradsight manifest: not a recording.")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordingError(f"{where}: {str(file)!r} is not valid JSON ({exc}); the manifest is damaged or this "
                             "is not a gradsight recording.") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise RecordingError(f"{where}: {str(file)!r} is JSON but not a gradsight recording manifest "
                             f"(expected \"format\": \"{FORMAT_NAME}\").")
    major = _major(data.get("format_version"), file, where)
    if major > FORMAT_VERSION[0]:
        reader = data.get("read_by") or "a newer gradsight"
        raise RecordingVersionError(
            f"{where}: {str(root)!r} uses recording format {data.get('format_version')} (written by gradsight "
            f"{data.get('gradsight_version', '?')}); this gradsight {gradsight_version()} reads format "
            f"{FORMAT_VERSION[0]}.x. Upgrade to gradsight >= {reader}: pip install -U 'gradsight>={reader}'.")
    if major < 1:
        raise RecordingError(f"{where}: {str(file)!r} has an invalid format version {data.get('format_version')!r}.")
    for key in ("layers", "bins", "layer_metrics", "step_columns", "hist_kinds"):
        if key not in data:
            raise RecordingError(f"{where}: {str(file)!r} lacks {key!r}: the manifest is damaged.")
    return data


def _major(version: Any, file: Path, where: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise RecordingError(f"{where}: {str(file)!r} has an unreadable format version {version!r}.") from None


def stale_after(manifest: dict[str, Any]) -> float:
    """Seconds without a touch of the manifest after which its writer counts as gone: max(10 s, 20 T)."""
    chunks = manifest.get("chunks") or {}
    return max(10.0, 20 * float(chunks.get("seconds") or 0.5))


def state_of(manifest: dict[str, Any], root: Path) -> str:
    """"closed", "live" (its writer still appends) or "ended early" (the writer stopped without closing)."""
    if manifest.get("state") == "closed":
        return "closed"
    return "live" if writer_alive(manifest, root, stale_after(manifest)) else "ended early"


def writer_alive(manifest: dict[str, Any], root: Path, stale_after: float) -> bool:
    """Whether the writer still appends: not closed, its process alive (same host), and the
    manifest touched within ``stale_after`` seconds (any host)."""
    if manifest.get("state") != "recording":
        return False
    writer = manifest.get("writer") or {}
    if writer.get("host") == HOST and isinstance(writer.get("pid"), int) and not _pid_alive(writer["pid"]):
        return False
    try:
        age = time.time() - os.stat(root / MANIFEST).st_mtime
    except OSError:
        return False
    return age < stale_after


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
