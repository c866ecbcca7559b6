"""The ``compare`` message: two sources (live watchers or recordings) side by side in the panel.

The same facts as ``gradsight.widgets.compare(a, b)``, read through the same public API and
helpers: each run's loss over steps, its per-layer metric at its last step over its leaf layers
(with the NaN/Inf gradient counts that the figure marks), its findings; and the union of both
runs' layers (A's order, then B's others) so that a layer one run lacks shows as missing there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..widgets import source as views
from . import convert, payloads
from .buffers import Packer
from .limits import MAX_LAYERS, MAX_SHORT_TEXT, MAX_STEPS

DEFAULT_METRIC = "grad_norm"
_LABEL_LIMIT = 300


def union_layers(*names: list[str]) -> list[str]:
    """Every name once, in the first run's order, then the names only later runs have."""
    seen: dict[str, None] = {}
    for run in names:
        for n in run:
            seen.setdefault(n, None)
    return list(seen)


def _run(w: Any, label: str, metric: str, packer: Packer) -> dict[str, Any]:
    layers = w.layers()
    names = [str(n) for n in layers["layer"]]
    leaves = views.leaf_layers(names)[:MAX_LAYERS] if names else []
    values = views.column(layers, metric)[leaves] if leaves else np.empty(0)
    nonfinite = views.nonfinite_counts(layers, "grad")[leaves] if leaves else np.empty(0)
    last = convert.integer(layers["step"].iloc[0]) if len(layers) and "step" in layers.columns else None
    steps = w.steps()
    idx = payloads.decimate(len(steps), MAX_STEPS)
    step_cols = {c: packer.ref(views.column(steps, c)[idx]) for c in ("step", "loss") if c in steps.columns}
    return {
        "watcher": payloads.watcher_summary(w),
        "label": label[:_LABEL_LIMIT],
        "last_step": last if last is not None and last >= 0 else None,
        "steps": {"total": len(steps), "columns": step_cols},
        "flow": {
            "names": [convert.text(names[i], MAX_SHORT_TEXT) or "" for i in leaves],
            "values": packer.ref(values),
            "nonfinite": packer.ref(nonfinite),
        },
        "findings": payloads.findings(w.findings()),
    }


def compare(a: Any, b: Any, metric: str = DEFAULT_METRIC, request_id: str | None = None) -> payloads.Message:
    """Runs ``a`` (A) and ``b`` (B), labelled by their source names, which the kernel keeps unique."""
    packer = Packer()
    runs = [_run(w, f"{tag}: {w.name}", metric, packer) for tag, w in (("A", a), ("B", b))]
    msg = {
        "v": payloads.PROTOCOL_VERSION,
        "kind": "compare",
        "id": request_id,
        "metric": metric,
        "layers": union_layers(*(r["flow"]["names"] for r in runs)),
        "runs": runs,
    }
    return msg, packer.buffers
