"""Derived per-layer metrics: the numbers people read, computed from raw summary fields.

Kept apart from capture so that each can be tested against a naive numpy
re-implementation (tests/test_metrics.py).
"""

from __future__ import annotations

import numpy as np

from ..records.fields import F
from .step_record import StepRecord

# Measured only on detail steps (every histogram_every-th): everything but norms and counts.
DETAIL_METRICS = tuple(f"{p}_{n}" for p in ("act", "grad") for n in ("mean", "std", "min", "max", "zero_frac")) \
    + ("param_norm", "update_norm", "update_ratio", "saturation", "saved_bytes")
STAT_NAMES = ("mean", "std", "min", "max", "norm", "zero_frac", "nan", "posinf", "neginf")
LAYER_METRICS = (
    tuple(f"act_{n}" for n in STAT_NAMES)
    + tuple(f"grad_{n}" for n in STAT_NAMES)
    + ("param_norm", "param_grad_norm", "update_norm", "update_ratio", "saturation", "saved_bytes")
)


def tensor_stats(raw: np.ndarray, numel: np.ndarray) -> dict[str, np.ndarray]:
    """mean, std (population), min, max, L2 norm, zero fraction and non-finite counts."""
    raw = _unsaturate(np.asarray(raw, dtype=np.float64))
    n = np.asarray(numel, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_safe = np.where(n > 0, n, np.nan)
        mean = raw[:, F["sum"]] / n_safe
        var = raw[:, F["sumsq"]] / n_safe - mean**2
        std = np.sqrt(np.maximum(var, 0.0))
        std = np.where(np.isfinite(var), std, np.nan)
        norm = np.sqrt(raw[:, F["sumsq"]])
        zero_frac = 1.0 - (raw[:, F["nonzero"]] + raw[:, F["nan"]]) / n_safe
    return {
        "mean": mean, "std": std, "min": raw[:, F["min"]], "max": raw[:, F["max"]], "norm": norm,
        "zero_frac": zero_frac, "nan": raw[:, F["nan"]], "posinf": raw[:, F["posinf"]],
        "neginf": raw[:, F["neginf"]],
    }


FLOAT32_MAX = float(np.finfo(np.float32).max)
_SUMS = [F["sum"], F["sumsq"]]


def _unsaturate(raw: np.ndarray) -> np.ndarray:
    """A float32 sum (of squares) of finite values overflows to Inf above ~3.4e38 (a norm
    above ~1.8e19): where the non-finite counts say every value was finite, keep it finite
    at the float32 maximum — a lower bound — so that huge-but-finite never reads as Inf."""
    if not np.isinf(raw[:, _SUMS]).any():
        return raw
    counts = raw[:, F["nan"]] + raw[:, F["posinf"]] + raw[:, F["neginf"]]
    finite = counts == 0  # NaN counts (not measured) compare False: left as they are
    out = raw.copy()
    for k in (F["sum"], F["sumsq"]):
        col = out[:, k]
        hit = finite & np.isinf(col)
        col[hit] = np.sign(col[hit]) * FLOAT32_MAX
    return out


def layer_metrics(rec: StepRecord) -> dict[str, np.ndarray]:
    """Every metric of :data:`LAYER_METRICS` for every layer of one record, shape [L] each."""
    out: dict[str, np.ndarray] = {}
    scale = _grad_scale(rec)
    for prefix, raw, numel in (("act", rec.act, rec.act_numel), ("grad", rec.grad, rec.grad_numel)):
        for name, values in tensor_stats(raw, numel).items():
            if prefix == "grad" and name in _SCALED:
                values = values / scale  # GradScaler multiplies every gradient by the scale
            out[f"{prefix}_{name}"] = values
    L = rec.n_layers
    for j, (name, values) in enumerate((("param_norm", rec.param_sumsq),
                                        ("param_grad_norm", rec.param_grad_sumsq),
                                        ("update_norm", rec.param_update_sumsq))):
        out[name] = _per_layer_norm(values, rec.param_seen[:, j], rec.param_layer, L)
    out["param_grad_norm"] = out["param_grad_norm"] / scale
    with np.errstate(invalid="ignore", divide="ignore"):
        out["update_ratio"] = out["update_norm"] / out["param_norm"]
    out["saturation"] = rec.saturation.astype(np.float64)
    # bytes this layer's forward saved for backward (detail steps; NaN elsewhere)
    out["saved_bytes"] = np.asarray(rec.saved_bytes, dtype=np.float64) if rec.saved_bytes is not None \
        else np.full(L, np.nan)
    return out


_SCALED = ("mean", "std", "min", "max", "norm")


def _grad_scale(rec: StepRecord) -> float:
    s = rec.grad_scale
    return s if np.isfinite(s) and s > 0 else 1.0


def _per_layer_norm(sumsq: np.ndarray, measured: np.ndarray, owner: np.ndarray,
                    n_layers: int) -> np.ndarray:
    """sqrt of summed squares of each layer's own measured parameters (a non-finite one
    makes the layer's value non-finite); NaN for layers with nothing measured."""
    total = np.zeros(n_layers)
    seen = np.zeros(n_layers, dtype=bool)
    valid = np.asarray(measured, dtype=bool)
    np.add.at(total, owner[valid], sumsq[valid])
    seen[owner[valid]] = True
    with np.errstate(invalid="ignore"):
        return np.where(seen, np.sqrt(total), np.nan)


def total_grad_norm(rec: StepRecord) -> float:
    """Global L2 norm of all measured parameter gradients (what clip_grad_norm_ sees)."""
    g = rec.param_grad_sumsq[rec.param_seen[:, 1]]
    # float64: a float32 sum of saturated squares overflows (and numpy would warn the user)
    return float(np.sqrt(g.sum(dtype=np.float64))) / _grad_scale(rec) if g.size else float("nan")
