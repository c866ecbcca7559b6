"""Replaying rows read from a recording into a RunHistory, as the watcher stored them.

The stores decimate the same way the watcher's did, so a recording holding every step
answers every query exactly as the watcher that wrote it; ``latest.parquet`` restores the
full-precision latest values that ``layers()`` shows.
"""

from __future__ import annotations

import numpy as np

from ..records.histogram import EXTRA_COUNTS, HIST_KINDS
from ..records.metrics import LAYER_METRICS
from ..records.run_history import RunHistory
from ..records.unit_history import UnitRing
from .loader import Update


def ingest(h: RunHistory, up: Update) -> None:
    for s, row in zip(up.steps, up.scalars, strict=True):
        h.scalars.append(int(s), row)
    if up.layer_values is not None:
        for s, values in zip(up.layer_steps, up.layer_values, strict=True):
            h.layer_metrics.append(int(s), values)
    _histograms(h, up.hist)
    for step, i, per_unit in sorted(up.units, key=lambda r: (r[0], r[1])):
        ring = h.units.get(i)
        if ring is None or ring.values.shape[1] != per_unit.size:
            ring = h.units[i] = UnitRing(per_unit.size)
        ring.add(step, per_unit)
    if up.latest is not None and len(up.latest) == h.n_layers:
        _latest(h, up.latest)
    elif h.latest_metrics is None and h.layer_metrics.n:  # no snapshot yet: the newest stored row
        steps, data = h.layer_metrics.valid()
        h.latest_metrics = {m: data[-1, k].astype(np.float64) for k, m in enumerate(LAYER_METRICS)}
        h.latest_step = int(steps[-1])


def _histograms(h: RunHistory, rows: list) -> None:
    if not rows:
        return
    L, K, B = h.n_layers, len(HIST_KINDS), h.bins
    rows = sorted(rows, key=lambda r: r[0])
    start = 0
    while start < len(rows):
        step = rows[start][0]
        end = start
        while end < len(rows) and rows[end][0] == step:
            end += 1
        edges = np.full((L, K, B + 1), np.nan)
        counts = np.full((L, K, B), -1, dtype=np.int64)
        extra = np.full((L, K, len(EXTRA_COUNTS)), -1, dtype=np.int64)
        for _, i, of, e, c, x in rows[start:end]:
            if of in HIST_KINDS and len(e) == B + 1 and len(c) == B:
                k = HIST_KINDS.index(of)
                edges[i, k], counts[i, k], extra[i, k] = e, c, x
        h.hist_edges.append(step, edges)
        h.hist_counts.append(step, counts)
        h.hist_extra.append(step, extra)
        start = end


def _latest(h: RunHistory, df) -> None:
    step = int(df["step"].iloc[0]) if "step" in df.columns else -1
    if step < 0:
        return
    h.latest_metrics = {m: df[m].to_numpy(dtype=np.float64) if m in df.columns else np.full(h.n_layers, np.nan)
                        for m in LAYER_METRICS}
    h.latest_step = step
    if "dtype" in df.columns:
        h.dtypes = [str(d) for d in df["dtype"]]
