"""Rows to Arrow tables: from step records (streaming) and from the read API (saving).

Column names, types and units are documented in docs/recording-format.md; the layer
metrics are float32, as in gradsight's in-memory history, and ``latest.parquet`` keeps
the newest step's values in full precision (what ``layers()`` shows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..records.histogram import EXTRA_COUNTS
from ..records.metrics import LAYER_METRICS
from ..records.run_history import STEP_COLUMNS, merge_latest, step_scalars
from ..records.step_record import StepRecord
from .format import RANK_STEP_COLUMNS


def _pa():
    import pyarrow as pa

    return pa


def _names(indices: np.ndarray, names: Sequence[str]):
    pa = _pa()
    return pa.DictionaryArray.from_arrays(pa.array(indices, type=pa.int32()), pa.array(list(names), pa.string()))


def _lists(values: list[np.ndarray], dtype) -> Any:
    pa = _pa()
    flat = np.concatenate(values) if values else np.zeros(0, dtype=dtype)
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.astype(dtype, copy=False)))


def steps_table(steps: np.ndarray, scalars: np.ndarray, detail: np.ndarray | None,
                rank_scalars: np.ndarray | None = None):
    """``scalars``: [n, len(STEP_COLUMNS)] float64; ``detail``: bool per step or None (unknown);
    ``rank_scalars``: [n, len(RANK_STEP_COLUMNS)] in a torch.distributed job's shard, else None."""
    pa = _pa()
    cols = {"step": pa.array(np.asarray(steps, dtype=np.int64))}
    for k, f in enumerate(STEP_COLUMNS):
        cols[f] = pa.array(np.asarray(scalars[:, k], dtype=np.float64))
    cols["detail"] = pa.array(detail, pa.bool_()) if detail is not None else pa.nulls(len(steps), pa.bool_())
    if rank_scalars is not None:
        for k, f in enumerate(RANK_STEP_COLUMNS):
            cols[f] = pa.array(np.asarray(rank_scalars[:, k], dtype=np.float64))
    return pa.table(cols)


def layers_table(steps: np.ndarray, values: np.ndarray, names: Sequence[str]):
    """``values``: [n, len(LAYER_METRICS), L] -> one row per (step, layer), float32 metrics."""
    pa = _pa()
    n, _, L = values.shape
    cols = {"step": pa.array(np.repeat(np.asarray(steps, dtype=np.int64), L)),
            "layer": _names(np.tile(np.arange(L, dtype=np.int32), n), names)}
    v = np.asarray(values, dtype=np.float32)
    for k, m in enumerate(LAYER_METRICS):
        cols[m] = pa.array(np.ascontiguousarray(v[:, k, :]).ravel())
    return pa.table(cols)


def histograms_table(rows: list[tuple[int, int, str, Any]], names: Sequence[str]):
    """``rows``: (step, layer index, of, Histogram)."""
    pa = _pa()
    extra = np.array([[getattr(h, e) for e in EXTRA_COUNTS] for *_, h in rows], dtype=np.int64).reshape(-1, len(EXTRA_COUNTS))
    cols = {"step": pa.array(np.array([r[0] for r in rows], dtype=np.int64)),
            "layer": _names(np.array([r[1] for r in rows], dtype=np.int32), names),
            "of": pa.array([r[2] for r in rows], pa.string()),
            "edges": _lists([np.asarray(r[3].edges) for r in rows], np.float64),
            "counts": _lists([np.asarray(r[3].counts) for r in rows], np.int64)}
    for k, e in enumerate(EXTRA_COUNTS):
        cols[e] = pa.array(extra[:, k])
    return pa.table(cols)


def units_table(rows: list[tuple[int, int, np.ndarray]], names: Sequence[str]):
    """``rows``: (step, layer index, per-unit max output)."""
    pa = _pa()
    return pa.table({"step": pa.array(np.array([r[0] for r in rows], dtype=np.int64)),
                     "layer": _names(np.array([r[1] for r in rows], dtype=np.int32), names),
                     "values": _lists([np.asarray(r[2]) for r in rows], np.float32)})


def latest_table(names: Sequence[str], step: int, dtypes: Sequence[str], latest: dict):
    """What ``layers()`` shows beyond the manifest: each layer's dtype and latest metrics (float64)."""
    pa = _pa()
    L = len(names)
    cols = {"layer": pa.array(list(names), pa.string()), "dtype": pa.array(list(dtypes), pa.string()),
            "step": pa.array(np.full(L, step, dtype=np.int64))}
    for m in LAYER_METRICS:
        cols[m] = pa.array(np.asarray(latest.get(m, np.full(L, np.nan)), dtype=np.float64))
    return pa.table(cols)


def frame_table(df: pd.DataFrame):
    pa = _pa()
    return pa.Table.from_pandas(df, preserve_index=False)


# --- from step records (the streaming writer) ---------------------------------------------

class RecordBatch:
    """Step records waiting to be written, turned into tables at flush time (writer thread)."""

    def __init__(self, names: Sequence[str], hist_kinds: Sequence[str]):
        self.names = tuple(names)
        self.kinds = tuple(hist_kinds)
        self.items: list[tuple[StepRecord, dict]] = []
        self.rank_rows: list[np.ndarray | None] = []

    def add(self, rec: StepRecord, metrics: dict, rank_row: np.ndarray | None = None) -> None:
        """``rank_row``: this rank's RANK_STEP_COLUMNS at this step (a torch.distributed job), else None."""
        self.items.append((rec, metrics))
        self.rank_rows.append(rank_row)

    def __len__(self) -> int:
        return len(self.items)

    def merge_latest(self, latest: dict | None) -> dict | None:
        """The latest metrics after this batch, merged as the watcher merges them (from the
        batch's last detail step on: a detail step replaces everything)."""
        start = max((j for j, (r, _) in enumerate(self.items) if r.detail), default=0)
        for r, m in self.items[start:]:
            latest = merge_latest(latest, m, r.detail)
        return latest

    def tables(self) -> dict[str, Any]:
        items, names = self.items, self.names
        steps = np.array([r.step for r, _ in items], dtype=np.int64)
        scalars = np.array([step_scalars(r) for r, _ in items], dtype=np.float64).reshape(-1, len(STEP_COLUMNS))
        detail = np.array([bool(r.detail) for r, _ in items])
        values = np.stack([np.stack([m[k] for k in LAYER_METRICS]) for _, m in items])
        ranked = None
        if any(r is not None for r in self.rank_rows):
            nan = np.full(len(RANK_STEP_COLUMNS), np.nan)
            ranked = np.array([r if r is not None else nan for r in self.rank_rows], dtype=np.float64)
        out = {"steps": steps_table(steps, scalars, detail, ranked), "layers": layers_table(steps, values, names)}
        hist = [(r.step, i, of, h) for r, _ in items
                for (i, of), h in sorted(r.hist.items(), key=lambda kv: (kv[0][0], self.kinds.index(kv[0][1])))]
        if hist:
            out["histograms"] = histograms_table(hist, names)
        units = [(r.step, i, v) for r, _ in items for i, v in sorted(r.units.items())]
        if units:
            out["units"] = units_table(units, names)
        return out

