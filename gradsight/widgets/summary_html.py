"""The compact HTML a Watcher shows as the last expression of a cell.

One status line (layers, steps, latest loss and total gradient norm, with a loss
sparkline as inline SVG), findings counted by severity, and the findings as a short
table in the order ``w.findings()`` returns (earliest first). Plain HTML with inline styles and no matplotlib, so it renders in any
front-end (JupyterLab, Notebook 7, VS Code, Colab) and costs microseconds.
"""

from __future__ import annotations

import html
import math

import numpy as np

from . import source, style

MAX_ROWS = 8


def watcher_html(w, *, max_rows: int = MAX_ROWS) -> str:
    """HTML summary of a Watcher (what ``Watcher._repr_html_`` returns)."""
    esc = html.escape
    try:
        steps = w.steps()
    except Exception:
        steps = None
    found = source.findings_frame(w)
    status = "closed" if getattr(w, "closed", False) else "watching"
    n_layers = len(getattr(w, "layer_names", []))
    parts = [f"<b>gradsight</b> · <code>{esc(str(w.name))}</code> — {status}, {n_layers} layers, "
             f"{int(getattr(w, 'step_count', 0))} steps"]
    if steps is not None and len(steps):
        loss = source.column(steps, "loss")
        gnorm = source.column(steps, "total_grad_norm")
        if np.isfinite(loss).any() or np.isinf(loss).any():
            parts.append(f"loss {_fmt(loss[-1])} {sparkline(loss)}")
        if len(gnorm):
            parts.append(f"total grad norm {_fmt(gnorm[-1])}")
    head = ", ".join(parts)
    badges = _badges(found)
    table = _table(found, max_rows) if len(found) else \
        '<div style="opacity:0.75">No findings.</div>'
    hint = ('<div style="opacity:0.6;font-size:0.9em;margin-top:2px">w.dashboard() for the live view · '
            "w.findings(), w.layers(), w.history(metric) for the tables</div>")
    return (f'<div class="gradsight-summary" style="font-size:0.92em;line-height:1.4">'
            f"<div>{head}</div><div>{badges}</div>{table}{hint}</div>")


def findings_html(found, *, max_rows: int = MAX_ROWS) -> str:
    """Findings as a compact HTML table, in the order given (w.findings() order)."""
    return _table(source.findings_frame(None, found), max_rows)


def sparkline(values, width: int = 90, height: int = 16) -> str:
    """A tiny inline SVG line of the finite values (empty string with fewer than two)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return ""
    if v.size > width:
        v = v[np.linspace(0, v.size - 1, width).round().astype(int)]
    if (v > 0).all() and v.max() / v.min() > 100:
        v = np.log10(v)  # a diverging loss spans decades: a log line keeps its early steps visible
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo or 1.0
    xs = np.linspace(1, width - 1, v.size)
    ys = height - 1 - (v - lo) / span * (height - 2)
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    return (f'<svg width="{width}" height="{height}" style="vertical-align:middle" role="img" '
            f'aria-label="loss over steps"><polyline fill="none" stroke="{style.BLUE}" stroke-width="1.3" '
            f'points="{pts}"/></svg>')


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return f"{x:.4g}"


def _badge(text: str, color: str) -> str:
    return (f'<span style="display:inline-block;padding:0 6px;margin-right:4px;border-radius:8px;'
            f'background:{color};color:white;font-size:0.85em">{html.escape(text)}</span>')


def _badges(found) -> str:
    """Confirmed findings counted by severity, and the suspicions apart: the badge never
    says "0 findings" while evidence for one is building."""
    if not len(found) or "severity" not in found.columns:
        return _badge("0 findings", style.GREEN)
    status = found["status"].astype(str) if "status" in found.columns else None
    suspected = int((status == "suspected").sum()) if status is not None else 0
    confirmed = found[status != "suspected"] if status is not None else found
    counts = confirmed["severity"].astype(str).value_counts()
    out = [_badge(f"{int(counts[s])} {s}{'s' if counts[s] != 1 else ''}", style.SEVERITY_COLOR[s])
           for s in ("error", "warning", "info") if s in counts]
    if suspected:
        out.append(_badge(f"{suspected} suspected", style.GREY))
    return "".join(out)


def _table(found, max_rows: int) -> str:
    esc = html.escape
    if not len(found):
        return ""
    rows = []
    for r in found.head(max_rows).to_dict("records"):  # in findings() order: one order everywhere
        sev = str(r.get("severity", ""))
        label = "suspected" if r.get("status") == "suspected" else sev
        steps = _steps(r)
        where = f"<code>{esc(style.short_name(str(r.get('layer', '')), 40))}</code>"
        op = r.get("op")
        if isinstance(op, str) and op:
            where += f' <span style="opacity:0.7">{esc(op)}</span>'
        rows.append(
            f'<tr><td>{_badge(label, style.SEVERITY_COLOR.get(label, style.GREY))}</td>'
            f"<td><b>{esc(str(r.get('kind', '')))}</b></td><td>{where}</td>"
            f'<td style="white-space:nowrap">{esc(steps)}</td>'
            f'<td style="text-align:left">{esc(str(r.get("message", "")))}</td></tr>')
    more = len(found) - max_rows
    tail = f'<div style="opacity:0.7">… and {more} more: w.findings()</div>' if more > 0 else ""
    th = "".join(f'<th style="text-align:left">{h}</th>' for h in ("", "kind", "layer", "step", "message"))
    return (f'<table style="border-collapse:collapse;margin-top:4px"><thead><tr>{th}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>{tail}")


def _steps(r: dict) -> str:
    try:
        first = int(r.get("step"))
    except (TypeError, ValueError):
        return ""
    try:
        last = int(r.get("last_step"))
        count = int(r.get("count"))
    except (TypeError, ValueError):
        return str(first)
    return f"{first}–{last} (×{count})" if last > first else str(first)
