"""Run the example notebooks headless and print what gradsight found in each.

    python -m gradsight.demo examples            # every examples/*.ipynb, in name order
    python -m gradsight.demo examples --only 01 03

Each notebook runs in a fresh kernel with nbclient (outputs are not written back: the
notebooks stay committed without outputs). After the last cell, one extra cell asks the
kernel for its live watchers and their findings, so this works for any notebook that
uses ``gs.watch``. The exit status is 1 when a notebook fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "GRADSIGHT_DEMO"
PROBE = f"""
import json as _json
from gradsight import bus as _registry
_rows = []
for _w in _registry.active_watchers():
    _f = _w.findings()
    _rows.append({{"watcher": _w.name, "steps": _w.step_count,
                   "findings": _f[["step", "layer", "kind", "severity", "message"]].to_dict("records")}})
print({MARK!r}, _json.dumps(_rows, default=str))
"""


@dataclass
class NotebookRun:
    path: Path
    seconds: float = 0.0
    error: str | None = None
    watchers: list = field(default_factory=list)
    notebook: object = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def stream_text(self) -> str:
        """Everything the notebook printed (stdout streams), in cell order."""
        out = []
        for cell in getattr(self.notebook, "cells", []):
            for o in cell.get("outputs", []):
                if o.get("output_type") == "stream" and o.get("name") == "stdout":
                    out.append(o.get("text", ""))
        return "".join(out)


def kernel_env() -> dict:
    """The kernel imports this checkout's gradsight even where it is not pip-installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("MPLBACKEND", "agg")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def run_notebook(path: str | Path, *, timeout: int = 300, kernel_name: str = "python3") -> NotebookRun:
    """Execute one notebook in a fresh kernel; never raises for a failing cell (see ``.error``)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    run = NotebookRun(path=path)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    try:
        client.execute(env=kernel_env())
    except CellExecutionError as exc:
        run.error = _ends(str(exc), 6, 12)
    except Exception as exc:  # kernel died, timeout, ...
        run.error = f"{type(exc).__name__}: {_first_lines(str(exc), 10)}"
    run.seconds = time.perf_counter() - t0
    run.notebook = nb
    for line in run.stream_text().splitlines():
        if line.startswith(MARK + " "):
            run.watchers = json.loads(line[len(MARK) + 1:])
    return run


def notebooks(folder: str | Path, only: list[str] | None = None) -> list[Path]:
    paths = sorted(Path(folder).glob("*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) or o in p.stem for o in only)]
    return paths


def report(run: NotebookRun, out=sys.stdout) -> None:
    status = "ok" if run.ok else "FAILED"
    print(f"\n== {run.path.name}: {status} in {run.seconds:.1f} s", file=out)
    if not run.ok:
        print(run.error, file=out)
        return
    if not run.watchers:
        print("   (no live watcher at the end)", file=out)
    for w in run.watchers:
        found = w["findings"]
        print(f"   watcher {w['watcher']!r}: {w['steps']} steps, {len(found)} finding(s)", file=out)
        for f in found:
            msg = str(f["message"])
            msg = msg if len(msg) <= 110 else msg[:107] + "..."
            print(f"     step {f['step']:>4}  {f['severity']:<7} {f['kind']:<18} {f['layer']!r:<14} {msg}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gradsight.demo", description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(ROOT / "examples"), help="folder of .ipynb files")
    parser.add_argument("--only", nargs="*", help="run only notebooks whose name starts with / contains these")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per cell (default 300)")
    args = parser.parse_args(argv)
    paths = notebooks(args.folder, args.only)
    if not paths:
        print(f"gradsight.demo: no notebooks in {args.folder!r}", file=sys.stderr)
        return 2
    failed = 0
    for p in paths:
        run = run_notebook(p, timeout=args.timeout)
        report(run)
        failed += not run.ok
    print(f"\n{len(paths) - failed} of {len(paths)} notebook(s) ran; {failed} failed.")
    return 1 if failed else 0


def _ends(text: str, head: int, tail: int) -> str:
    """The cell's first lines and the traceback's last ones (where the error is)."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()
    if len(lines) <= head + tail:
        return "\n".join(lines)
    return "\n".join(lines[:head] + ["..."] + lines[-tail:])


def _first_lines(text: str, n: int) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:n] + (["..."] if len(lines) > n else []))


if __name__ == "__main__":
    sys.exit(main())
