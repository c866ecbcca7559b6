"""Plain-JSON coercion of values that come out of pandas/numpy.

JSON has no NaN, numpy scalars are not JSON, and every string we send is bounded; these are
the only places where a kernel value becomes a protocol value.
"""

from __future__ import annotations

import math
from typing import Any

_BIG = 1e308  # +/-Inf travel as +/-1e308 (schema: `number`)


def number(x: Any) -> float | None:
    """A finite float, +/-1e308 for infinities, None for NaN/None/anything non-numeric."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    if math.isnan(f):
        return None
    if math.isinf(f):
        return _BIG if f > 0 else -_BIG
    return f


def integer(x: Any, default: int | None = None) -> int | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return default
    if not math.isfinite(f):
        return default
    return int(f)


def count(x: Any) -> int:
    return max(0, integer(x, 0) or 0)


def text(x: Any, limit: int) -> str | None:
    """A bounded string, or None for missing values (None/NaN/pd.NA)."""
    if x is None:
        return None
    if isinstance(x, float) and math.isnan(x):
        return None
    try:
        import pandas as pd

        if x is pd.NA or x is pd.NaT:
            return None
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    s = str(x)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def int_list(x: Any, limit: int = 16) -> list[int] | None:
    if x is None:
        return None
    try:
        return [int(v) for v in list(x)[:limit]]
    except (TypeError, ValueError):
        return None
