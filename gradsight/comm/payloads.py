"""Outgoing messages built from watchers: status, snapshot, layer and gradcheck_reports.

Pure functions of what the watcher API returns (pandas/numpy), so they work the same for a
live watcher and a fake; every size is capped here (see limits.py).
"""

from __future__ import annotations

import os
import platform
import re
from typing import Any

import numpy as np
import pandas as pd

from .._version import __version__
from ..widgets import source as views
from ..widgets.signed_log import common_axis, regrid
from . import convert
from .buffers import Packer
from .errors import ProtocolError
from .histcache import Hist, HistogramCache
from .limits import (
    MAX_AFFECTED,
    MAX_COLUMNS,
    MAX_FINDINGS,
    MAX_LAYERS,
    MAX_REPORT_TENSORS,
    MAX_REPORTS,
    MAX_SHORT_TEXT,
    MAX_STEPS,
    MAX_TEXT,
    MAX_WATCHERS,
)
from .schema import PROTOCOL_VERSION, definition
from .server_log import log

Message = tuple[dict[str, Any], list[memoryview]]
_COLUMN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
SEVERITIES: tuple[str, ...] = tuple(definition("severity")["enum"])  # least to most severe
HISTOGRAM_KINDS: tuple[str, ...] = tuple(definition("of")["enum"])


def _torch_version() -> str:
    try:
        import torch

        return str(torch.__version__)[:64]
    except Exception:
        return "unavailable"


def _name(x: Any) -> str:
    t = convert.text(x, MAX_SHORT_TEXT)
    return "?" if t is None else t


def watcher_summary(w: Any) -> dict[str, Any]:
    try:
        n_layers = len(w.layers())
    except Exception:
        n_layers = 0
    summary = {
        "name": convert.text(w.name, MAX_SHORT_TEXT) or "?",
        "step_count": convert.count(w.step_count),
        "n_layers": n_layers,
    }
    if hasattr(w, "recording"):  # comm.recording_source.RecordingSource
        summary["source"] = "recording"
        try:
            summary["live"] = bool(w.live)
        except Exception:
            summary["live"] = False
    return summary


def status(sources: Any, request_id: str | None = None) -> Message:
    watchers = sources.watchers()[:MAX_WATCHERS]
    msg = {
        "v": PROTOCOL_VERSION,
        "kind": "status",
        "id": request_id,
        "gradsight_version": __version__[:64],
        "protocol": PROTOCOL_VERSION,
        "kernel": {"python": platform.python_version(), "torch": _torch_version(), "pid": os.getpid()},
        "watchers": [watcher_summary(w) for w in watchers],
        "features": {
            "watchers": sources.registry is not None,
            "gradcheck": sources.gradcheck_reports() is not None,
        },
    }
    return msg, []


_last_block: tuple[Any, ...] = (None, None, None)  # (frame, skip, result); swapped whole: thread-safe


def _numeric_block(df: pd.DataFrame, skip: tuple[str, ...] = ()) -> tuple[list[str], np.ndarray]:
    """The numeric (and bool) columns as one float64 matrix: one conversion, not one per column
    (pandas per-column access dominated the cost of a push); a push's two messages share it."""
    global _last_block
    frame, last_skip, result = _last_block
    if frame is df and last_skip == skip:
        return result
    result = _numeric_block_uncached(df, skip)
    _last_block = (df, skip, result)
    return result


def _numeric_block_uncached(df: pd.DataFrame, skip: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    cols = [
        c
        for c, dt in df.dtypes.items()
        if isinstance(c, str)
        and c not in skip
        and _COLUMN_NAME.match(c)
        and (pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt))
    ][:MAX_COLUMNS]
    if not cols:
        return [], np.empty((len(df), 0))
    return cols, df[cols].to_numpy(dtype=np.float64, na_value=np.nan)


def decimate(n: int, limit: int) -> np.ndarray:
    """Evenly spaced row indices, first and last kept: a long run still shows its whole curve."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def finding_row(row: dict[str, Any]) -> dict[str, Any]:
    severity = str(row.get("severity") or "info")
    return {
        "step": convert.integer(row.get("step")),
        "last_step": convert.integer(row.get("last_step")),
        "count": convert.integer(row.get("count")),
        "layer": convert.text(row.get("layer"), MAX_SHORT_TEXT),
        "kind": convert.text(row.get("kind"), 64) or "unknown",
        "severity": severity if severity in SEVERITIES else "info",
        "message": convert.text(row.get("message"), MAX_TEXT),
        "hint": convert.text(row.get("hint"), MAX_TEXT),
        "phase": convert.text(row.get("phase"), MAX_SHORT_TEXT),
        "op": convert.text(row.get("op"), MAX_SHORT_TEXT),
        "source": convert.text(row.get("source"), MAX_SHORT_TEXT),
        "value": convert.number(row.get("value")),
        "threshold": convert.number(row.get("threshold")),
        "status": status if (status := str(row.get("status") or "confirmed")) in _STATUSES else "confirmed",
        "affected": [convert.text(a, MAX_SHORT_TEXT) for a in _as_list(row.get("affected"))[:MAX_AFFECTED]],
        "rank": _rank(row.get("rank")),
    }


def _rank(x: Any) -> int | None:
    """A finding's rank column: -1 (unknown) and missing values travel as null."""
    r = convert.integer(x)
    return r if r is not None and r >= 0 else None


_STATUSES = tuple(definition("finding")["properties"]["status"]["enum"])


def _as_list(value: Any) -> list:
    """`affected` arrives as a tuple of layer names (or NaN/None for rows without one)."""
    return list(value) if isinstance(value, (list, tuple)) else []


def findings(df: pd.DataFrame) -> dict[str, Any]:
    """The rows in w.findings()'s order, which the panel shows as is; past MAX_FINDINGS the most
    severe are kept (earliest first within a severity), still in that order."""
    total = len(df)
    if total == 0:
        return {"total": 0, "rows": []}
    picked = df
    if total > MAX_FINDINGS:
        least_severe_first = df["severity"].map(lambda s: -SEVERITIES.index(s) if s in SEVERITIES else 1)
        keep = np.sort(np.argsort(least_severe_first.to_numpy(), kind="stable")[:MAX_FINDINGS])
        picked = df.iloc[keep]
    return {"total": total, "rows": [finding_row(r) for r in picked.to_dict("records")]}


def world_size(w: Any) -> int:
    """Ranks of the torch.distributed job a source belongs to (1 outside one, or unknown)."""
    try:
        return max(1, int(getattr(w, "world_size", 1) or 1))
    except Exception:
        return 1


def first_bad_rank(df: pd.DataFrame) -> dict[str, Any] | None:
    """The rank that went wrong first, as the dashboard names it (one definition:
    gradsight.widgets.source.first_bad_rank), bounded for the protocol."""
    bad = views.first_bad_rank(df)
    if bad is None:
        return None
    layer = bad.get("layer")
    if layer in ("None", "nan", "<NA>"):  # the definition str()s a whole-model finding's missing layer
        layer = None
    return {
        "rank": int(bad["rank"]),
        "step": convert.integer(bad["step"]),
        "kind": convert.text(bad["kind"], 64) or "unknown",
        "layer": convert.text(layer, MAX_SHORT_TEXT),
    }


own_rank = views.own_rank  # the source's own rank: its process's (a live watcher), its top directory's (a recording)


def holds_every_rank(w: Any) -> bool:
    """Whether ``w`` holds every rank's layer statistics (a recording of the job) or only its own."""
    return hasattr(w, "recording")  # comm.recording_source.RecordingSource


def rank_layers(w: Any, rank: int | None, own: pd.DataFrame | None = None) -> tuple[pd.DataFrame, int | None]:
    """The layers table of ``rank`` (None: the source's own) and the rank it belongs to (None for
    one process). A rank the source does not hold gives the source's own rank's table: the
    panel says whose it shows rather than putting rank 0's numbers under rank 1's label."""
    if world_size(w) < 2:
        return (w.layers() if own is None else own), None
    mine = own_rank(w)
    if rank is not None and rank != mine and rank < world_size(w):
        try:
            return w.layers(rank=rank), rank
        except ValueError as e:  # a live watcher (its own rank only), a missing shard
            log.debug("%s: layers of rank %s unavailable: %s", getattr(w, "name", "?"), rank, e)
    return (w.layers() if own is None else own), mine


def ranks(w: Any, packer: Packer, findings_df: pd.DataFrame | None = None,
          layers_rank: int | None = None) -> dict[str, Any] | None:
    """The snapshot's rank part (schema: ranks), or None for a source with one rank."""
    n = world_size(w)
    if n < 2:
        return None
    try:
        table = w.ranks()
    except Exception as e:  # e.g. a recording whose rank shards do not open: the rest still shows
        log.warning("%s: no rank table for the panel: %s: %s", getattr(w, "name", "?"), type(e).__name__, e)
        return None
    cols, block = _numeric_block_uncached(table, ())
    mine = own_rank(w)
    return {
        "world_size": n,
        "rank": mine,
        "layers_rank": mine if layers_rank is None else layers_rank,
        "per_rank_layers": holds_every_rank(w),
        "columns": {c: packer.ref(block[:, j]) for j, c in enumerate(cols)},
        "first_bad": first_bad_rank(w.findings() if findings_df is None else findings_df),
    }


def snapshot(
    w: Any,
    request_id: str | None = None,
    *,
    layers: pd.DataFrame | None = None,
    findings_part: dict[str, Any] | None = None,
    findings_df: pd.DataFrame | None = None,
    rank: int | None = None,
) -> Message:
    """Per-layer statistics, the per-step series and the findings of one watcher (and, in a
    torch.distributed job, its rank part; the layer statistics are rank ``rank``'s where the
    source holds them, see rank_layers).

    `layers` (the source's own rank's), `findings_part` and `findings_df` let a push reuse what
    it already computed.
    """
    packer = Packer()
    layers, layers_rank = rank_layers(w, rank, layers)
    n = min(len(layers), MAX_LAYERS)
    names = [_name(x) for x in layers["layer"].iloc[:n]] if n else []
    types = (
        [convert.text(x, 128) or "" for x in layers["type"].iloc[:n]]
        if "type" in layers.columns and n
        else [""] * n
    )
    cols, block = _numeric_block(layers, ("layer",))
    layer_cols = {c: packer.ref(block[:n, j]) for j, c in enumerate(cols)}

    steps = w.steps()
    idx = decimate(len(steps), MAX_STEPS)
    cols, block = _numeric_block(steps)
    step_cols = {c: packer.ref(block[idx, j]) for j, c in enumerate(cols)}
    if findings_part is None:
        findings_df = w.findings() if findings_df is None else findings_df
        findings_part = findings(findings_df)
    msg = {
        "v": PROTOCOL_VERSION,
        "kind": "snapshot",
        "id": request_id,
        "watcher": {
            "name": w.name[:MAX_SHORT_TEXT],
            "step_count": convert.count(w.step_count),
            "n_layers": len(layers),
        },
        "selected_layer": None,
        "layers": {"names": names, "types": types, "total": len(layers), "columns": layer_cols},
        "steps": {"total": len(steps), "columns": step_cols},
        "findings": findings_part,
    }
    rank_part = ranks(w, packer, findings_df, layers_rank)
    if rank_part is not None:
        msg["ranks"] = rank_part
    return msg, packer.buffers


def _histograms(
    w: Any, layer: str, of: str, max_steps: int, packer: Packer, cache: HistogramCache | None, rank: int | None
) -> list[dict[str, Any]]:
    """``layer``'s ``of`` histograms over its last ``max_steps`` histogram steps, of rank ``rank``
    (None: the source's own; asked with ``rank=`` only then, so a one-process source needs no keyword)."""
    by_rank = {} if rank is None else {"rank": rank}
    try:
        steps = list(w.histogram_steps(layer, of=of, **by_rank))[-max_steps:]
    except ValueError:  # e.g. no weight histogram for a parameter-free layer
        return []
    hists = []
    for s in steps:
        h = cache.get(w, layer, rank, of, s) if cache is not None else None
        if h is None:
            try:
                h = Hist.of(w.histogram(layer, of=of, step=s, **by_rank), s)
            except ValueError:
                continue
            if cache is not None:
                cache.put(w, layer, rank, of, s, h)
        hists.append(h)
    return on_common_grid(hists, packer)


def on_common_grid(hists: list[Hist], packer: Packer) -> list[dict[str, Any]]:
    """The histograms of one series regridded onto one signed-log grid, sharing one edges buffer.

    Each step's histogram fits its bin edges to that step's range, so the panel could not
    overlay them bin by bin; the common grid (the one the Python views draw on) covers them all.
    """
    if not hists:
        return []
    cells = max(1, max(len(h.counts) // 2 for h in hists))  # per side: the resolution of the originals
    axis = common_axis(hists, cells=cells)
    magnitudes = 10.0 ** axis.grid()[1:]  # the innermost bin reaches 0, as in a Histogram
    edges = packer.ref(np.concatenate([-magnitudes[::-1], [0.0], magnitudes]))
    out = []
    for h in hists:
        regridded = regrid(h, axis)  # [negative cells, exact zeros, positive cells]
        counts = np.concatenate([regridded[:cells], regridded[cells + 1:]])
        out.append(
            {
                "step": h.step,
                "edges": edges,
                "counts": packer.ref(counts),
                "nan": h.nan,
                "posinf": h.posinf,
                "neginf": h.neginf,
                "zero": h.zero,
            }
        )
    return out


def layer_of(layers: pd.DataFrame, name: str) -> int:
    """Row index of `name` in layers(); unknown names are the panel's error, not ours."""
    hits = np.flatnonzero(layers["layer"].to_numpy() == name)
    if hits.size == 0:
        raise ProtocolError("not_found", f"no watched layer named {name!r}")
    return int(hits[0])


def layer(
    w: Any,
    name: str,
    max_steps: int,
    request_id: str | None = None,
    *,
    layers: pd.DataFrame | None = None,
    cache: HistogramCache | None = None,
    rank: int | None = None,
) -> Message:
    """Latest statistics and histograms over steps of one layer (unknown layer: not_found), of
    rank ``rank`` where the source holds that rank's (see rank_layers; ``layers``: the source's
    own rank's table, reused). In a torch.distributed source the reply says whose they are."""
    packer = Packer()
    layers, served = rank_layers(w, rank, layers)
    i = layer_of(layers, name)
    cols, block = _numeric_block(layers, ("layer",))
    stats = {c: convert.number(block[i, j]) for j, c in enumerate(cols)}
    layer_type = layers["type"].iloc[i] if "type" in layers.columns else ""
    own = own_rank(w) if served is not None else None
    msg = {
        "v": PROTOCOL_VERSION,
        "kind": "layer",
        "id": request_id,
        "watcher": w.name[:MAX_SHORT_TEXT],
        "layer": name,
        "type": convert.text(layer_type, 128) or "",
        "stats": stats,
        "histograms": {of: _histograms(w, name, of, max_steps, packer, cache, None if served == own else served)
                       for of in HISTOGRAM_KINDS},
    }
    if served is not None:
        msg["rank"] = served
    return msg, packer.buffers


def _report_dict(report: Any) -> dict[str, Any]:
    try:
        d = report.to_dict()
        return d if isinstance(d, dict) else {}
    except Exception:
        return {}


def gradcheck_report(report: Any) -> dict[str, Any]:
    d = _report_dict(report)

    def field(key: str) -> Any:
        return getattr(report, key, None) if getattr(report, key, None) is not None else d.get(key)

    try:
        frame = report.to_frame()
        rows = frame.to_dict("records")[:MAX_REPORT_TENSORS]
    except Exception:
        rows = []
    tensors = []
    for r in rows:
        shape = convert.int_list(r.get("shape"))
        tensors.append(
            {
                "name": convert.text(r.get("name"), MAX_SHORT_TEXT) or "?",
                "shape": shape if shape is not None else [],
                "passed": bool(r.get("passed")),
                "max_abs_err": convert.number(r.get("max_abs_err")),
                "max_rel_err": convert.number(r.get("max_rel_err")),
                "worst_index": convert.int_list(r.get("worst_index")),
                "analytic": convert.number(r.get("analytic")),
                "numeric": convert.number(r.get("numeric")),
            }
        )
    layer_name = convert.text(field("layer"), MAX_SHORT_TEXT)
    fn = convert.text(field("fn"), 64)
    if layer_name is not None:
        title = f"{layer_name} ({fn})" if fn else layer_name
    else:
        title = fn or type(report).__name__
    return {
        "title": convert.text(title, MAX_SHORT_TEXT) or "gradcheck",
        "step": convert.integer(field("step")),
        "watcher": convert.text(field("watcher"), MAX_SHORT_TEXT),
        "layer": layer_name,
        "mode": convert.text(field("mode"), MAX_SHORT_TEXT),
        "passed": bool(field("passed")),
        "tensors": tensors,
    }


def gradcheck_reports(reports: list[Any], request_id: str | None = None) -> Message:
    """Newest first; at most MAX_REPORTS."""
    newest_first = list(reversed(reports))[:MAX_REPORTS]
    msg = {
        "v": PROTOCOL_VERSION,
        "kind": "gradcheck_reports",
        "id": request_id,
        "total": len(reports),
        "reports": [gradcheck_report(r) for r in newest_first],
    }
    return msg, []


def error(code: str, message: str, request_id: str | None = None, request_kind: str | None = None) -> Message:
    return {
        "v": PROTOCOL_VERSION,
        "kind": "error",
        "id": request_id,
        "code": code,
        "message": message[:MAX_TEXT],
        "request_kind": request_kind[:64] if request_kind else None,
    }, []
