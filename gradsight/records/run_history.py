"""Every stored fact of one run, in bounded memory: what a Watcher keeps and a Recording reloads.

Layer facts (names, module types, parameter counts, activation dtypes), per-step layer
metrics, step scalars, histograms, per-unit activity and the latest value of every metric.
:meth:`RunHistory.append` takes one :class:`~.step_record.StepRecord` and derives its layer
metrics once; :class:`~.queries.RunQueries` turns the stores into tables. Sizing lives here
only: each store is preallocated from the model's size and thins old steps when full
(:class:`~.history.DecimatingStore`), so memory stays bounded whatever the run length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .histogram import EXTRA_COUNTS, HIST_KINDS
from .history import DecimatingStore
from .metrics import DETAIL_METRICS, LAYER_METRICS, layer_metrics, total_grad_norm
from .step_record import StepRecord
from .unit_history import UnitRing

HISTORY_BYTES = 32 * 2**20     # cap for per-layer metric history
HISTOGRAM_BYTES = 32 * 2**20   # cap for stored histograms
SCALAR_CAPACITY = 8192         # loss / lr / timings rows before thinning
STEP_COLUMNS = ("loss", "lr", "forward_s", "backward_s", "total_grad_norm", "data_s", "optimizer_s", "saved_bytes",
                "grad_scale", "optimizer_stepped")
"""Per-step scalars. grad_scale: the GradScaler's scale in that step's backward (1 without
``scaler=``; statistics are already divided by it). optimizer_stepped: 1 if ``optimizer.step()``
updated the weights, 0 if it was skipped (GradScaler, ``on_nonfinite="skip"``), NaN if unknown."""


class RunHistory:
    """The bounded history of one run, indexed by layer in model order.

    ``names``/``types``: the watched modules' qualified names and class names. ``bins``: the
    histogram bin count. ``param_counts``: parameters each layer owns (zeros if not given).
    ``name`` and ``histogram_every`` are the run's name and histogram period, for messages.
    """

    def __init__(self, names: Sequence[str], types: Sequence[str], bins: int, *,
                 param_counts: Sequence[int] | None = None, name: str = "run", histogram_every: int = 1):
        self.names = tuple(names)
        self.types = tuple(types)
        if len(self.types) != len(self.names):
            raise ValueError(f"gradsight: RunHistory got {len(self.names)} layer names but {len(self.types)} types; "
                             "give one type per layer.")
        self.index = {n: i for i, n in enumerate(self.names)}
        self.bins = int(bins)
        self.name = name
        self.histogram_every = int(histogram_every)
        L = len(self.names)
        self.param_counts = np.zeros(L, dtype=np.int64) if param_counts is None else \
            np.asarray(param_counts, dtype=np.int64).reshape(L)
        self.dtypes = [""] * L                               # activation dtype at the latest step
        self.latest_metrics: dict[str, np.ndarray] | None = None  # for layers(): see merge_latest
        self.latest_step: int | None = None
        self.step_metrics: dict[str, np.ndarray] | None = None    # of the last appended record

        cap = HISTORY_BYTES // max(1, 4 * L * len(LAYER_METRICS))
        self.layer_metrics = DecimatingStore(min(4096, max(64, cap)), (len(LAYER_METRICS), L))
        self.scalars = DecimatingStore(SCALAR_CAPACITY, (len(STEP_COLUMNS),), dtype=np.float64)
        K, B, X = len(HIST_KINDS), self.bins, len(EXTRA_COUNTS)
        per_hist = L * K * (2 * B + 1 + X) * 8
        capacity = max(8, min(1024, HISTOGRAM_BYTES // max(per_hist, 1)))
        self.hist_edges = DecimatingStore(capacity, (L, K, B + 1), dtype=np.float64)
        self.hist_counts = DecimatingStore(capacity, (L, K, B), dtype=np.int64, fill=-1)
        self.hist_extra = DecimatingStore(capacity, (L, K, X), dtype=np.int64, fill=-1)
        self.units: dict[int, UnitRing] = {}

    @property
    def n_layers(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        """Host memory of the bounded stores."""
        stores = (self.layer_metrics, self.scalars, self.hist_edges, self.hist_counts, self.hist_extra)
        return sum(s.nbytes for s in stores)

    @property
    def max_nbytes(self) -> int:
        """Host memory of the stores at their caps (they grow on demand up to it)."""
        stores = (self.layer_metrics, self.scalars, self.hist_edges, self.hist_counts, self.hist_extra)
        return sum(s.max_nbytes for s in stores)

    def append(self, rec: StepRecord) -> dict[str, np.ndarray]:
        """Store one closed step; returns its layer metrics (computed here, once)."""
        metrics = self.step_metrics = layer_metrics(rec)
        self.latest_metrics = merge_latest(self.latest_metrics, metrics, rec.detail)
        self.latest_step = rec.step
        self.dtypes = [rec.dtypes.get(i, "") for i in range(self.n_layers)]
        self.layer_metrics.append(rec.step, np.stack([metrics[m] for m in LAYER_METRICS]))
        for i, per_unit in rec.units.items():
            ring = self.units.get(i)
            if ring is None or ring.values.shape[1] != per_unit.size:
                ring = self.units[i] = UnitRing(per_unit.size)
            ring.add(rec.step, per_unit)
        self.scalars.append(rec.step, step_scalars(rec))
        if rec.hist:
            self._append_histograms(rec)
        return metrics

    def _append_histograms(self, rec: StepRecord) -> None:
        L, K, B = self.n_layers, len(HIST_KINDS), self.bins
        edges = np.full((L, K, B + 1), np.nan)
        counts = np.full((L, K, B), -1, dtype=np.int64)
        extra = np.full((L, K, len(EXTRA_COUNTS)), -1, dtype=np.int64)
        for (i, of), h in rec.hist.items():
            k = HIST_KINDS.index(of)
            edges[i, k] = h.edges
            counts[i, k] = h.counts
            extra[i, k] = [getattr(h, c) for c in EXTRA_COUNTS]
        self.hist_edges.append(rec.step, edges)
        self.hist_counts.append(rec.step, counts)
        self.hist_extra.append(rec.step, extra)

    def reindex(self, names: Sequence[str], types: Sequence[str], param_counts: Sequence[int],
                moved: Sequence[tuple[int, int]] | None = None) -> None:
        """The model changed (a module added, removed or replaced): rows follow the modules.

        ``moved``: (old row, new row) of each module still in the model (default: same name
        and type). Those keep their history under their new name; new modules start empty
        (NaN) and removed ones' history is dropped, so no row ever mixes two modules.
        """
        names, types = tuple(names), tuple(types)
        new_index = {n: i for i, n in enumerate(names)}
        pairs = list(moved) if moved is not None else \
            [(i, new_index[n]) for i, n in enumerate(self.names)
             if n in new_index and types[new_index[n]] == self.types[i]]
        old = [a for a, _ in pairs]
        new = [b for _, b in pairs]
        L = len(names)
        self.layer_metrics.remap(1, L, old, new)
        for store in (self.hist_edges, self.hist_counts, self.hist_extra):
            store.remap(0, L, old, new)
        moved = dict(pairs)
        self.units = {moved[i]: ring for i, ring in self.units.items() if i in moved}
        for attr in ("latest_metrics", "step_metrics"):
            metrics = getattr(self, attr)
            if metrics is not None:
                remapped = {}
                for k, v in metrics.items():
                    out = np.full(L, np.nan, dtype=np.result_type(v.dtype, np.float64))
                    out[new] = v[old]
                    remapped[k] = out
                setattr(self, attr, remapped)
        dtypes = [""] * L
        for a, b in pairs:
            dtypes[b] = self.dtypes[a]
        self.dtypes = dtypes
        self.names, self.types = names, types
        self.index = new_index
        self.param_counts = np.asarray(param_counts, dtype=np.int64).reshape(L)

    def set_loss(self, step: int, loss: float) -> None:
        """The loss of an already stored step (``w.step(loss=...)`` after ``optimizer.step()``)."""
        row = self.scalars.row_of(step)
        if row is not None:
            self.scalars.data[row, STEP_COLUMNS.index("loss")] = loss


def step_scalars(rec: StepRecord) -> list[float]:
    """One record's row of :data:`STEP_COLUMNS` (what ``steps()`` shows; recordings write the same)."""
    lr = rec.lrs[0] if rec.lrs else float("nan")
    saved = float(np.nansum(rec.saved_bytes)) if rec.saved_bytes is not None and \
        np.isfinite(rec.saved_bytes).any() else float("nan")
    stepped = float("nan") if rec.optimizer_stepped is None else float(rec.optimizer_stepped)
    return [rec.loss, lr, rec.forward_s, rec.backward_s, total_grad_norm(rec), rec.data_s, rec.optimizer_s, saved,
            rec.grad_scale, stepped]


_DETAIL_BY_PREFIX = {p: tuple(m for m in DETAIL_METRICS if m.startswith(p)) for p in ("act", "grad")}


def merge_latest(old: dict | None, new: dict, detail: bool) -> dict:
    """Latest value of every metric for layers(): on light steps the detail metrics keep their
    last measured value — unless the layer went non-finite, when the new values are the news."""
    if old is None or detail:
        return new
    merged = dict(new)
    for prefix in ("act", "grad"):
        with np.errstate(invalid="ignore"):
            news = (new[f"{prefix}_nan"] > 0) | (new[f"{prefix}_posinf"] > 0) | (new[f"{prefix}_neginf"] > 0)
        some = news.any()
        for m in _DETAIL_BY_PREFIX[prefix]:
            merged[m] = np.where(news, new[m], old[m]) if some else old[m]
    for m in ("param_norm", "update_norm", "update_ratio", "saturation", "saved_bytes"):
        merged[m] = old[m]
    return merged
