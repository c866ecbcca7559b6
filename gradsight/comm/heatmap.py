"""The ``heatmap`` message: one per-layer metric of every layer over the recorded steps.

The panel's view of "where and when did gradients vanish or explode": layers are rows (model
order), steps columns. A long run is bounded to ``MAX_STEP_COLUMNS`` columns by grouping
consecutive steps; a group shows its most extreme step (furthest from the layer's median on a
log scale), never a mean, so a one-step spike or collapse survives the thinning, and it counts
the steps in it that went non-finite, so no NaN disappears either.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from . import payloads
from .buffers import Packer
from .limits import MAX_LAYERS, MAX_SHORT_TEXT
from .schema import PROTOCOL_VERSION, definition

METRICS: tuple[str, ...] = tuple(definition("heatmap_metric")["enum"])
DEFAULT_METRIC = "grad_norm"
MAX_STEP_COLUMNS = 500     # step columns at most (the panel is a few hundred pixels wide)
MAX_CELLS = 200_000   # layers x columns at most: a 1000-layer model gets fewer columns (1.6 MB of float64)
_NONFINITE = ("nan", "posinf", "neginf")


def history(w: Any, metric: str, rank: int | None) -> tuple[pd.DataFrame, int | None]:
    """``w.history(metric)`` of ``rank`` (None: the source's own) and the rank served (None for one
    process); a rank the source does not hold gives its own, as payloads.rank_layers does."""
    if payloads.world_size(w) < 2:
        return w.history(metric), None
    mine = payloads.own_rank(w)
    if rank is not None and rank != mine and rank < payloads.world_size(w):
        try:
            return w.history(metric, rank=rank), rank
        except ValueError:  # a live watcher holds its own rank's layers only; a missing shard
            pass
    return w.history(metric), mine


def nonfinite_steps(w: Any, metric: str, rank: int | None, values: np.ndarray) -> np.ndarray:
    """Where (steps x layers) the value was NaN or +-Inf: the tensor's NaN/Inf counts for act_* and
    grad_* metrics, an infinite value for the others (whose NaN reads as "no value")."""
    bad = np.isinf(values)
    prefix = metric.split("_", 1)[0]
    if prefix in ("act", "grad"):
        for kind in _NONFINITE:
            counts, _ = history(w, f"{prefix}_{kind}", rank)
            with np.errstate(invalid="ignore"):
                bad |= counts.to_numpy(dtype=np.float64) > 0
    return bad


def extreme_columns(values: np.ndarray, bad: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (layers x steps) in columns of ``span`` consecutive steps: per cell the value of the
    step furthest from its layer's median log10 (a non-finite step first, then an exact zero; NaN
    where no step has a value) and the number of non-finite steps."""
    L, S = values.shape
    cols = -(-S // span)
    pad = cols * span - S
    v = np.pad(values, ((0, 0), (0, pad)), constant_values=np.nan).reshape(L, cols, span)
    b = np.pad(bad, ((0, 0), (0, pad)), constant_values=False).reshape(L, cols, span)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(np.abs(v))
        usable = np.isfinite(logs)
        median = np.array([np.median(row[ok]) if ok.any() else 0.0
                           for row, ok in zip(logs.reshape(L, -1), usable.reshape(L, -1), strict=True)])
        score = np.where(usable, np.abs(logs - median[:, None, None]), -np.inf)
    score = np.where(v == 0, np.finfo(np.float64).max, score)
    score = np.where(b, np.inf, score)
    pick = np.argmax(score, axis=2)
    cells = np.take_along_axis(v, pick[..., None], axis=2)[..., 0]
    cells = np.where(np.take_along_axis(score, pick[..., None], axis=2)[..., 0] == -np.inf, np.nan, cells)
    return cells, b.sum(axis=2)


def span_for(n_steps: int, n_layers: int, max_columns: int = MAX_STEP_COLUMNS) -> tuple[int, int]:
    """(steps per column, column limit): at most ``max_columns`` (the panel's pixels),
    MAX_STEP_COLUMNS columns and MAX_CELLS cells."""
    limit = max(1, min(max_columns, MAX_STEP_COLUMNS, MAX_CELLS // max(1, n_layers)))
    return max(1, math.ceil(n_steps / limit)), limit


def heatmap(w: Any, metric: str = DEFAULT_METRIC, rank: int | None = None,
            request_id: str | None = None, max_columns: int = MAX_STEP_COLUMNS) -> payloads.Message:
    """The heatmap of ``metric`` (schema: heatmap_metric) of source ``w``, rank ``rank``, in at
    most ``max_columns`` step columns."""
    frame, served = history(w, metric, rank)
    names = [payloads._name(c) for c in list(frame.columns)[:MAX_LAYERS]]
    raw = frame.to_numpy(dtype=np.float64)
    bad = nonfinite_steps(w, metric, served, raw)
    # steps where no layer has a value (a detail metric between detail steps) are left out
    kept = ~np.isnan(raw).all(axis=1) | bad.any(axis=1) if raw.shape[1] else np.ones(len(raw), dtype=bool)
    values = raw[kept, :len(names)].T          # layers x steps
    bad = bad[kept, :len(names)].T
    steps = frame.index.to_numpy(dtype=np.float64)[kept]
    span, limit = span_for(len(steps), len(names), max_columns)
    cells, counts = extreme_columns(values, bad, span) if len(names) else (np.empty((0, 0)), np.empty((0, 0)))
    packer = Packer()
    msg = {
        "v": PROTOCOL_VERSION,
        "kind": "heatmap",
        "id": request_id,
        "watcher": w.name[:MAX_SHORT_TEXT],
        "metric": metric,
        "rank": served,
        "layers": names,
        "steps": packer.ref(steps[::span]),
        "values": packer.ref(cells),
        "nonfinite": packer.ref(counts, "uint32"),
        "total_steps": len(steps),
        "skipped_steps": int(len(kept) - kept.sum()),
        "step_span": span,
        "max_columns": limit,
    }
    return msg, packer.buffers
