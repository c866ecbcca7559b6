"""The ``gradsight`` console command: ``gradsight summary runs/exp1`` for terminals and CI logs.

Exit status: 0 when the run has no error-severity finding, 1 when it has one (a CI job can
fail on a NaN origin), 2 when the recording cannot be opened.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

WIDTH = 100
MAX_LAYER_ROWS = 12
MAX_FINDINGS = 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gradsight", description="gradsight: a gradient debugger for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("summary", help="print a recording's findings and a one-screen summary "
                                       "(exit 1 when an error-severity finding exists)")
    s.add_argument("path", help="a recording directory (gs.watch(..., record=PATH) or w.save(PATH))")
    args = parser.parse_args(argv)
    from .recording.format import RecordingError
    from .recording.reader import open_recording

    try:
        rec = open_recording(args.path)
    except (RecordingError, OSError, TypeError) as exc:
        print(f"gradsight summary: {exc}", file=sys.stderr)
        return 2
    text, has_error = summary(rec, args.path)
    print(text)
    return 1 if has_error else 0


def summary(rec: Any, path: str) -> tuple[str, bool]:
    """The one-screen text and whether an error-severity finding exists."""
    lines = []
    state = {"live": "live, still recording", "ended early": "ended early: a writer stopped without closing "
             "the recording (killed or crashed)"}.get(rec.state, rec.state)
    world = int(getattr(rec, "world_size", 1))
    job = f"torch.distributed job of {world} ranks; " if world > 1 else ""
    lines.append(f"gradsight recording {path} - {rec.name!r} ({state}; {job}format "
                 f"{rec.manifest.get('format_version')}, written by gradsight {rec.manifest.get('gradsight_version')})")
    st = rec.steps()
    if len(st):
        loss = st["loss"].to_numpy(dtype=np.float64)
        lines.append(f"steps {int(st['step'].iloc[0])}-{int(st['step'].iloc[-1])} ({len(st)} stored) | "
                     f"{len(rec.layer_names)} layers")
        lines.append(f"loss: {_loss_line(st['step'].to_numpy(), loss)}")
        gn = st["total_grad_norm"].to_numpy(dtype=np.float64)
        lines.append(f"total gradient norm: last {_num(gn[-1])}, max {_num(np.nanmax(gn) if np.isfinite(gn).any() else np.nan)}")
    else:
        lines.append(f"no steps recorded yet | {len(rec.layer_names)} layers")
    if rec.problems:
        lines.append(f"{len(rec.problems)} problem(s) reading it:")
        lines += [f"  {p}" for p in rec.problems]
    lines.append("")
    if world > 1:
        lines += _ranks(rec)
        lines.append("")
    lines += _layers(rec.layers(), f"rank {rec.rank}'s " if world > 1 else "")
    lines.append("")
    found = rec.findings()
    sev = found["severity"].astype(str).tolist() if len(found) else []
    counts = ", ".join(f"{sev.count(s)} {s}" for s in ("error", "warning", "info") if sev.count(s))
    lines.append(f"Findings: {len(found)}" + (f" ({counts})" if counts else " - nothing wrong detected"))
    for _, f in found.head(MAX_FINDINGS).iterrows():
        span = f"step {f['step']}" if f["step"] == f["last_step"] else f"steps {f['step']}-{f['last_step']}"
        where = f["layer"] if str(f["layer"]) else "(model)"
        rank = f" [rank {int(f['rank'])}]" if world > 1 and "rank" in found and int(f["rank"]) >= 0 else ""
        lines += _wrap(f"{str(f['severity']).upper():7} {f['kind']}{rank} at {where}, {span} (x{f['count']}): "
                       f"{f['message']}", "  ", " " * 10)
        if str(f.get("hint", "")):
            lines += _wrap(f"hint: {f['hint']}", " " * 10, " " * 16)
    if len(found) > MAX_FINDINGS:
        lines.append(f"  ... and {len(found) - MAX_FINDINGS} more: gs.open({path!r}).findings()")
    return "\n".join(out for line in lines for out in _fit(line.rstrip())), "error" in sev


def _ranks(rec: Any) -> list[str]:
    """One line per rank of a job (median times, non-finite steps, findings naming it)."""
    try:
        df = rec.ranks()
    except ValueError as exc:
        return [f"Ranks: {exc}"]
    out = ["Ranks (median seconds per step):",
           f"  {'rank':>4} {'steps':>6} {'step_s':>9} {'busy_s':>9} {'allreduce_s':>11} {'first NaN/Inf':>13} "
           f"{'findings':>8}"]
    for k in _shown(len(df)):
        if k < 0:
            out.append(f"  ... {_hidden(len(df))} more ranks ...")
            continue
        r = df.iloc[k]
        first = int(r["first_nonfinite_step"])
        out.append(f"  {int(r['rank']):>4} {int(r['steps']):>6} {_num(r['step_s']):>9} {_num(r['busy_s']):>9} "
                   f"{_num(r['allreduce_s']):>11} {('step ' + str(first)) if first >= 0 else '-':>13} "
                   f"{int(r['findings']):>8}")
    return out


def _layers(df, whose: str = "") -> list[str]:
    from .widgets.source import leaf_layers

    if not len(df):
        return ["no layers"]
    idx = leaf_layers([str(n) for n in df["layer"]])
    rows = df.iloc[idx]
    step = int(df["step"].iloc[0])
    out = [f"Layers ({whose}leaf modules, values at step {step}):" if step >= 0 else "Layers (no step yet):",
           f"  {'layer':32} {'type':16} {'grad_norm':>10} {'act_norm':>10} {'update/w':>10}  non-finite"]
    for k in _shown(len(rows)):
        if k < 0:
            out.append(f"  ... {_hidden(len(rows))} more layers ...")
            continue
        r = rows.iloc[k]
        bad = sum(float(r.get(f"{p}_{n}", 0) or 0) for p in ("act", "grad") for n in ("nan", "posinf", "neginf")
                  if np.isfinite(float(r.get(f"{p}_{n}", 0) or 0)))
        name = str(r["layer"]) or "(model)"
        out.append(f"  {name[-32:]:32} {str(r['type'])[:16]:16} {_num(r['grad_norm']):>10} {_num(r['act_norm']):>10} "
                   f"{_num(r['update_ratio']):>10}  {'NaN/Inf' if bad else ''}")
    return out


def _shown(n: int) -> list[int]:
    """Row positions to print: all, or the first and last MAX_LAYER_ROWS / 2 with -1 for the gap."""
    if n <= MAX_LAYER_ROWS:
        return list(range(n))
    half = MAX_LAYER_ROWS // 2
    return list(range(half)) + [-1] + list(range(n - half, n))


def _hidden(n: int) -> int:
    """How many of ``n`` rows the gap of :func:`_shown` stands for."""
    return n - 2 * (MAX_LAYER_ROWS // 2)


def _loss_line(steps, loss) -> str:
    """First and last loss, the minimum, and where it turned non-finite. A NaN loss is also what a step
    without ``w.step(loss=...)`` stores, so NaNs before the first finite loss are not called non-finite;
    after it they are (the run went on giving its loss), and the last value shown is the last step's."""
    ok = np.isfinite(loss)
    if not ok.any():
        return "no finite value (NaN: not passed to w.step(loss=...), or non-finite)" if np.isnan(loss).all() \
            else "non-finite"
    first, last = np.nonzero(ok)[0][[0, -1]]
    best = int(np.nanargmin(np.where(ok, loss, np.nan)))
    text = f"{_num(loss[first])} -> {_num(loss[-1])} (min {_num(loss[best])} at step {int(steps[best])})"
    bad = np.nonzero(~ok & ((np.arange(len(loss)) > first) | np.isinf(loss)))[0]
    if bad.size:
        text += f"; NaN/Inf from step {int(steps[bad[0]])}"
        if last < len(loss) - 1:
            text += f", last finite {_num(loss[last])} at step {int(steps[last])}"
    return text


def _num(v) -> str:
    v = float(v)
    if not np.isfinite(v):
        return "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")
    return f"{v:.4g}"


def _wrap(text: str, first: str, rest: str) -> list[str]:
    import textwrap

    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False) or [first]


def _fit(s: str) -> list[str]:
    """A line as is, or wrapped (continued with 4 more spaces of indent): nothing is cut off."""
    if len(s) <= WIDTH:
        return [s]
    indent = " " * (len(s) - len(s.lstrip()))
    return _wrap(s.strip(), indent, indent + "    ")


if __name__ == "__main__":
    sys.exit(main())
