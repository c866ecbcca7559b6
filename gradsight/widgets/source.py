"""What views read: a run *source* (a live Watcher, a Recording), or tables saved earlier.

A source is anything with the public read API of :class:`gradsight.records.queries.RunQueries`
— ``layer_names``, ``layers()``, ``history(metric)``, ``steps()``,
``histogram_steps(layer, of)``, ``histogram(layer, of, step)``, ``unit_history(layer)``,
``findings()``, ``last_step`` — plus ``name`` (str) and ``step_count`` (steps so far).
Live sources may also have ``closed`` (bool); ``gradcheck(layer)`` and ``dashboard()``
exist only on a live Watcher. Views use nothing else: never watcher internals, never the
model, so a Recording works in every figure unchanged. Every figure also accepts the frames
a source returns (``layers()``, ``history(metric)``, ``findings()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..detectors.finding import FINDING_COLUMNS


def is_watcher(src) -> bool:
    return hasattr(src, "layers") and hasattr(src, "history") and callable(src.layers)


def layers_frame(src) -> pd.DataFrame:
    if isinstance(src, pd.DataFrame):
        return src
    if is_watcher(src):
        return src.layers()
    raise TypeError(f"gradsight: expected a Watcher or the DataFrame of w.layers(); got {type(src).__name__}.")


def history_frame(src, metric: str) -> pd.DataFrame:
    if isinstance(src, pd.DataFrame):
        return src
    if is_watcher(src):
        return src.history(metric)
    raise TypeError(f"gradsight: expected a Watcher or the DataFrame of w.history({metric!r}); "
                    f"got {type(src).__name__}.")


def findings_frame(src, findings=None) -> pd.DataFrame:
    """Findings given explicitly, else the watcher's, else an empty table."""
    if findings is None and is_watcher(src):
        try:
            findings = src.findings()
        except Exception:
            findings = None
    if findings is None:
        return pd.DataFrame(columns=FINDING_COLUMNS)
    if not isinstance(findings, pd.DataFrame):
        findings = pd.DataFrame(findings)
    return findings


def leaf_layers(names: Sequence[str]) -> list[int]:
    """Indices of modules without watched children: the layers a gradient flows through.

    Containers (``""``, ``Sequential``, blocks) repeat their last child's output and would
    double the picture. A model that is one leaf keeps its root row.
    """
    names = list(names)
    prefixes = {n.rsplit(".", 1)[0] if "." in n else "" for n in names if n != ""}
    leaves = [i for i, n in enumerate(names) if n != "" and n not in prefixes]
    return leaves or list(range(len(names)))


def finite(values) -> np.ndarray:
    return np.isfinite(np.asarray(values, dtype=np.float64))


def column(df: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as float64 (NaN when the table lacks it)."""
    if name in df.columns:
        return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
    return np.full(len(df), np.nan)


def nonfinite_counts(df: pd.DataFrame, prefix: str) -> np.ndarray:
    """NaN + Inf counts per row for ``grad`` or ``act`` (0 where unknown)."""
    total = np.zeros(len(df))
    for k in ("nan", "posinf", "neginf"):
        v = column(df, f"{prefix}_{k}")
        total += np.where(np.isfinite(v), v, 0.0)
    return total


def world_size(src) -> int:
    """Ranks of the torch.distributed job a source belongs to (1 outside one, or unknown)."""
    try:
        return max(1, int(getattr(src, "world_size", 1) or 1))
    except Exception:
        return 1


def own_rank(src) -> int:
    """A source's own rank, whose layers its queries show without ``rank=``: its process's (a live
    watcher), its top directory's (a recording); 0 outside a job."""
    try:
        return max(0, int(getattr(src, "rank", 0) or 0))
    except Exception:
        return 0


class RankView:
    """One rank of a source that holds every rank's layer statistics (a recording of a
    torch.distributed job), with the read API the views use: layer tables, histories,
    histograms and unit activity are rank ``rank``'s (``src.layers(rank=r)``, ...); step
    scalars and findings are the source's (the findings of every rank, with their ``rank``)."""

    def __init__(self, src, rank: int):
        self.src = src
        self.rank = int(rank)

    def __getattr__(self, attr: str):  # name, step_count, world_size, closed, root, steps(), findings() ...
        return getattr(self.src, attr)

    @property
    def layer_names(self) -> list[str]:
        return [str(n) for n in self.layers()["layer"]]

    @property
    def last_step(self) -> int | None:
        steps = self.history("grad_norm").index
        return int(steps[-1]) if len(steps) else None

    def layers(self) -> pd.DataFrame:
        return self.src.layers(rank=self.rank)

    def history(self, metric: str = "grad_norm") -> pd.DataFrame:
        return self.src.history(metric, rank=self.rank)

    def histogram_steps(self, layer: str, of: str = "grad") -> list[int]:
        return self.src.histogram_steps(layer, of, rank=self.rank)

    def histogram(self, layer: str, of: str = "grad", step: int | None = None):
        return self.src.histogram(layer, of=of, step=step, rank=self.rank)

    def unit_history(self, layer: str) -> pd.DataFrame:
        return self.src.unit_history(layer, rank=self.rank)


def of_rank(src, rank: int | None):
    """``(view, shown)``: the source to draw the layer views of rank ``rank`` from, and the rank they
    show (None outside a job). A source that holds every rank's layers (a recording of the job) gives
    a :class:`RankView`; one that holds only its own rank's (a live watcher), or a rank it has no
    layers of (a missing shard), gives itself and its own rank: a view then says whose it shows,
    never another rank's numbers under the chosen rank's label."""
    if world_size(src) < 2:
        return src, None
    own = own_rank(src)
    if rank is None or rank == own:
        return src, own
    try:
        src.layers(rank=rank)  # raises ValueError for a rank whose layers the source does not hold
    except (TypeError, ValueError):
        return src, own
    return RankView(src, rank), int(rank)


def findings_of_rank(findings: pd.DataFrame, rank: int | None) -> pd.DataFrame:
    """The findings a view of rank ``rank``'s layers marks: that rank's, and those of no single rank
    (rank -1 or missing); all of them for one process (``rank`` None). A layer of rank 0 is not
    flagged by the NaN rank 1 produced in the layer of the same name."""
    if rank is None or "rank" not in findings.columns:
        return findings
    ranks = pd.to_numeric(findings["rank"], errors="coerce")
    return findings[(ranks == rank) | (ranks < 0) | ranks.isna()]


def label(src) -> str:
    """How a chooser names a source: its run name; a recording adds its directory (a recording of
    the model watched in this kernel has the same run name)."""
    root = getattr(src, "root", None)
    name = str(getattr(src, "name", type(src).__name__))
    return f"{name} [{Path(str(root)).name}]" if root is not None else name


def first_bad_rank(findings: pd.DataFrame) -> dict | None:
    """The rank that went wrong first: the rank of the earliest error finding that names one.

    DDP's all-reduce spreads one rank's NaN to every rank within the step, so other ranks often
    report errors at that step too; a ``rank_nonfinite`` finding there names the rank that
    produced the value and wins. ``findings`` is in ``w.findings()`` order. Returns
    ``{"rank", "step", "kind", "layer"}`` or None.
    """
    if not len(findings) or "rank" not in findings.columns:
        return None
    ranks = pd.to_numeric(findings["rank"], errors="coerce")
    steps = pd.to_numeric(findings["step"], errors="coerce")
    errors = findings[(findings["severity"].astype(str) == "error") & (ranks >= 0) & steps.notna()]
    if not len(errors):
        return None
    first = errors[steps[errors.index] == steps[errors.index].min()]
    origin = first[first["kind"] == "rank_nonfinite"]
    row = (origin if len(origin) else first).iloc[0]
    return {"rank": int(row["rank"]), "step": int(row["step"]), "kind": str(row["kind"]),
            "layer": str(row["layer"])}
