"""``w.save(path)``: write what a watcher (or a recording) holds, once, through its read API.

Reading through the public queries means anything that answers them can be saved (a
Recording too), and the saved recording answers them the same way.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..records.metrics import LAYER_METRICS
from ..records.run_history import STEP_COLUMNS
from ..records.unit_history import WINDOW
from . import chunks
from .format import (
    FINDINGS,
    HISTOGRAMS,
    LATEST,
    LAYERS,
    RANK_STEP_COLUMNS,
    RANKS,
    STEPS,
    TABLES,
    UNITS,
    ChunkName,
)
from .manifest import write_manifest
from .recorder import manifest_for, prepare_directory
from .tables import frame_table, histograms_table, latest_table, layers_table, steps_table, units_table


def save(q: Any, path: Any, *, hist_kinds: tuple[str, ...], units_window: int = WINDOW, rank: int | None = None,
         world_size: int | None = None) -> Path:
    """Rank r of a torch.distributed job (``rank``/``world_size``, default ``q``'s) writes its shard of
    ``path`` (see ``format.shard_root``), as ``record=`` does."""
    rank = int(q.rank) if rank is None else rank
    world_size = int(q.world_size) if world_size is None else world_size
    root = prepare_directory(path, "save", rank, world_size)
    manifest = manifest_for(q, "save", 0, 0.0, units_window, hist_kinds, rank, world_size)
    manifest["chunks"] = None
    names = list(q.layer_names)
    for t in TABLES:
        (root / t).mkdir(exist_ok=True)
    size = 0

    st = q.steps()
    hist = {m: q.history(m) for m in LAYER_METRICS}
    layer_steps = hist[LAYER_METRICS[0]].index.to_numpy(dtype=np.int64)
    if len(st) or len(layer_steps):
        shape = (len(layer_steps), len(names))
        values = np.stack([hist[m].to_numpy(dtype=np.float64) if m in hist else np.full(shape, np.nan)
                           for m in LAYER_METRICS], axis=1)
        all_steps = np.concatenate([st["step"].to_numpy(dtype=np.int64), layer_steps])
        name = ChunkName(int(all_steps.min()), int(all_steps.max()), 0)
        size += chunks.write_table(root / LAYERS / name.file, layers_table(layer_steps, values, names))
        size += chunks.write_table(root / STEPS / name.file,
                                   steps_table(st["step"].to_numpy(), st[list(STEP_COLUMNS)].to_numpy(), None,
                                               _rank_scalars(q, rank, world_size, st["step"])))

    rows = []
    for i, layer in enumerate(names):
        for of in hist_kinds:
            rows += [(s, i, of, q.histogram(layer, of=of, step=s)) for s in q.histogram_steps(layer, of=of)]
    if rows:
        rows.sort(key=lambda r: (r[0], r[1], hist_kinds.index(r[2])))
        s = [r[0] for r in rows]
        size += chunks.write_table(root / HISTOGRAMS / ChunkName(min(s), max(s), 0).file,
                                   histograms_table(rows, names))

    units = []
    for i, layer in enumerate(names):
        try:
            frame = q.unit_history(layer)
        except ValueError:  # not a ReLU-family layer
            continue
        units += [(int(s), i, row) for s, row in zip(frame.index, frame.to_numpy(dtype=np.float32), strict=True)]
    if units:
        units.sort(key=lambda r: (r[0], r[1]))
        s = [r[0] for r in units]
        size += chunks.write_table(root / UNITS / ChunkName(min(s), max(s), 0).file, units_table(units, names))

    latest = q.layers()
    size += chunks.write_table(root / LATEST, latest_table(names, int(latest["step"].iloc[0]) if len(latest) else -1,
                                                           latest["dtype"].tolist(),
                                                           {m: latest[m].to_numpy() for m in LAYER_METRICS}))
    size += chunks.write_table(root / FINDINGS, frame_table(q.findings()))
    if world_size > 1:
        with contextlib.suppress(ValueError):  # no cross-rank part
            size += chunks.write_table(root / RANKS, frame_table(q.ranks()))
    manifest.update(state="closed", closed=time.time(), bytes=size)
    write_manifest(root, manifest)  # last: a reader never sees a half-saved recording
    return root


def _rank_scalars(q: Any, rank: int, world_size: int, steps) -> np.ndarray | None:
    """This rank's RANK_STEP_COLUMNS at ``steps`` (NaN where not kept), in a job with a cross-rank part."""
    if world_size < 2:
        return None
    try:
        series = [q.history(m, rank=rank)[m] for m in RANK_STEP_COLUMNS]
    except ValueError:
        return None
    return np.column_stack([s[~s.index.duplicated()].reindex(steps).to_numpy(dtype=np.float64) for s in series])
