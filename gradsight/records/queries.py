"""The public read API of a run, as pandas tables: one implementation for a live Watcher and a
saved Recording, so every view and the panel work on both.

:class:`RunQueries` reads only ``self._history`` (a :class:`~.run_history.RunHistory`) and asks
the subclass for one thing it keeps elsewhere: the findings table (``_findings_frame``).
"""

from __future__ import annotations

import difflib

import numpy as np
import pandas as pd

from .histogram import EXTRA_COUNTS, HIST_KINDS, Histogram
from .metrics import LAYER_METRICS
from .run_history import STEP_COLUMNS, RunHistory

RANK_METRICS = ("step_s", "forward_s", "backward_s", "allreduce_s", "busy_s")
"""Per-rank step scalars of a torch.distributed job, for every rank (``history(metric, rank=r)``):
wall time of the step, its forward and backward, the all-reduce span, and the step less the
all-reduce (``busy_s``, what the straggler check compares)."""


class RunQueries:
    """Mixin: ``layers()``, ``history()``, ``steps()``, histograms, unit activity, findings."""

    _history: RunHistory

    def _findings_frame(self, all: bool = False) -> pd.DataFrame:  # noqa: A002
        raise NotImplementedError

    @property
    def layer_names(self) -> list[str]:
        return list(self._history.names)

    @property
    def last_step(self) -> int | None:
        """The latest recorded step, or None before the first."""
        return self._history.latest_step

    def _layer_index(self, layer: str, where: str, h: RunHistory | None = None) -> int:
        h = self._history if h is None else h
        if not isinstance(layer, str):
            raise TypeError(f"gradsight: {where} takes a layer name (str) as in model.named_modules(); "
                            f"got {type(layer).__name__}.")
        idx = h.index.get(layer)
        if idx is None:
            close = difflib.get_close_matches(layer, h.names, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"gradsight: {where}: no layer named {layer!r} in {h.name}.{hint} "
                             f"Known layers: w.layer_names ({len(h.names)} names).")
        return idx

    def layers(self, rank: int | None = None) -> pd.DataFrame:
        """One row per watched module, in model order, with the latest step's statistics (of rank
        ``rank`` of a torch.distributed job: a watcher holds its own rank's, a recording every rank's)."""
        h = self._of_rank(rank, "layers")
        L = h.n_layers
        metrics = h.latest_metrics or {}
        columns = {"layer": list(h.names), "type": list(h.types), "params": h.param_counts.copy(),
                   "dtype": list(h.dtypes)}
        columns.update({m: metrics.get(m, np.full(L, np.nan)) for m in LAYER_METRICS})
        columns["step"] = np.full(L, h.latest_step if h.latest_step is not None else -1)
        return pd.DataFrame(columns)  # built in one go: the panel reads it on every push

    # --- ranks of a torch.distributed job (world size 1 outside one) -------------------------
    @property
    def rank(self) -> int:
        """The rank whose layers the queries without ``rank=`` show (0 outside a distributed job)."""
        return 0

    @property
    def world_size(self) -> int:
        return 1

    def ranks(self) -> pd.DataFrame:
        """One row per rank: median step, forward, backward, all-reduce and busy times, non-finite
        steps, the findings naming that rank; ``self`` marks :attr:`rank`."""
        raise ValueError(f"gradsight: ranks() needs a run of a torch.distributed job with world size > 1; "
                         f"{self._history.name!r} ran in one process.")

    def _rank_history(self, metric: str, rank: int) -> pd.DataFrame:
        """A :data:`RANK_METRICS` series of ``rank`` (subclasses in a job hold them)."""
        raise ValueError(f"gradsight: history({metric!r}, rank={rank}): no per-rank step times in this run.")

    def _history_of(self, rank: int, what: str = "history") -> RunHistory:
        """The layer statistics of ``rank`` (metrics, histograms, unit activity): a watcher holds its
        own rank's only; a recording, every rank's. ``what`` names the query in errors."""
        if rank == self.rank:
            return self._history
        raise ValueError(f"gradsight: {what}(rank={rank}): this watcher is rank {self.rank}; rank {rank}'s layer "
                         f"statistics are in that rank's own watcher, or in a recording of the job (gs.watch(..., "
                         f"record=path) in every rank, then gs.open(path).{what}(..., rank={rank})). Every rank "
                         f"holds every rank's {', '.join(RANK_METRICS)}.")

    def _of_rank(self, rank: int | None, what: str) -> RunHistory:
        """The history a query with ``rank=`` reads: the source's own (None), else rank ``rank``'s."""
        if rank is None:
            return self._history
        self._check_rank(rank)
        return self._history_of(int(rank), what)

    def _check_rank(self, rank) -> None:
        W = self.world_size
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < W:
            if W == 1:
                raise ValueError(f"gradsight: rank={rank!r}: {self._history.name!r} is not part of a torch.distributed "
                                 "job, so it has rank 0 only.")
            raise ValueError(f"gradsight: rank={rank!r}; this job has ranks 0..{W - 1} (world size {W}).")

    def history(self, metric: str = "grad_norm", rank: int | None = None) -> pd.DataFrame:
        """One row per recorded step, one column per layer (or one column for step metrics).

        A name that is both (``saved_bytes``) is the per-layer history here; its step total
        is the ``steps()`` column of the same name. ``rank=r`` (a torch.distributed job): rank r's
        series; the :data:`RANK_METRICS` are kept for every rank, layer metrics by each rank's
        own watcher and in a recording of the job."""
        if rank is None:
            return _history_frame(self._history, metric)
        self._check_rank(rank)
        if metric in RANK_METRICS and self.world_size > 1:
            return self._rank_history(metric, int(rank))
        return _history_frame(self._history_of(int(rank)), metric)

    def steps(self) -> pd.DataFrame:
        """Per-step scalars: loss, learning rate (first group), wall times, total gradient norm."""
        steps, data = self._history.scalars.valid()
        df = pd.DataFrame(data, columns=list(STEP_COLUMNS))
        df.insert(0, "step", steps)
        return df

    def histogram_steps(self, layer: str, of: str = "grad", rank: int | None = None) -> list[int]:
        """The steps with a histogram of ``layer``'s ``of`` (of rank ``rank``, as in :meth:`layers`)."""
        h = self._of_rank(rank, "histogram_steps")
        return _histogram_steps(h, self._layer_index(layer, "histogram_steps", h), _of_index(of))

    def histogram(self, layer: str, of: str = "grad", step: int | None = None, rank: int | None = None) -> Histogram:
        """The histogram of ``layer``'s gradient, activation or weight (latest, or at ``step``; of
        rank ``rank`` of a torch.distributed job: a watcher holds its own rank's, a recording every rank's)."""
        h = self._of_rank(rank, "histogram")
        i = self._layer_index(layer, "histogram", h)
        k = _of_index(of)
        available = _histogram_steps(h, i, k)
        if not available:
            raise ValueError(
                f"gradsight: no {of} histogram of {layer!r} yet. Histograms are taken every "
                f"{h.histogram_every} step(s) (histogram_every=); run a training step first"
                + (" (weights only exist for layers with their own parameters)." if of == "weight" else "."))
        if step is None:
            step = available[-1]
        if step not in available:
            raise ValueError(f"gradsight: no {of} histogram of {layer!r} at step {step}; "
                             f"available: {available[:5]}{' ...' if len(available) > 5 else ''} up to {available[-1]}.")
        r = h.hist_counts.row_of(step)
        extra = dict(zip(EXTRA_COUNTS, map(int, h.hist_extra.data[r, i, k]),
                         strict=True))
        return Histogram(layer=layer, of=of, step=int(step), edges=h.hist_edges.data[r, i, k].copy(),
                         counts=h.hist_counts.data[r, i, k].copy(), **extra)

    def unit_history(self, layer: str, rank: int | None = None) -> pd.DataFrame:
        """Per-unit max output of a ReLU-family layer over the last steps (rows: steps, columns:
        units; of rank ``rank``, as in :meth:`layers`). A unit whose column never exceeds 0 produced
        no positive value in the window."""
        h = self._of_rank(rank, "unit_history")
        i = self._layer_index(layer, "unit_history", h)
        ring = h.units.get(i)
        if ring is None:
            raise ValueError(f"gradsight: unit_history({layer!r}): no unit activity recorded for this "
                             f"{h.types[i]}. It is kept for ReLU-family modules (ReLU, LeakyReLU, GELU, SiLU, "
                             "...) after a training step.")
        steps, values = ring.ordered()
        return pd.DataFrame(values, index=pd.Index(steps, name="step"))

    def to_tensorboard(self, logdir) -> int:
        """Write this run's stored steps to TensorBoard event files in ``logdir`` (scalars, per-layer
        norms, non-finite counts, pre-binned histograms); returns the number of steps written."""
        from .tensorboard_export import export

        return export(self._history, logdir)

    def findings(self, all: bool = False) -> pd.DataFrame:  # noqa: A002 - reads as w.findings(all=True)
        """What the detectors found: one row per cause and episode (issue 3's contract, issue 10's
        ``status`` and ``affected``). ``status`` is ``suspected`` while the evidence is still
        building and ``confirmed`` once it is complete; ``all=True`` also lists the suspicions
        that were dismissed because they stopped holding."""
        # all=True only when asked: a reader that keeps no dismissed suspicions need not take it
        return self._findings_frame(all=True) if all else self._findings_frame()


def _history_frame(h: RunHistory, metric: str) -> pd.DataFrame:
    if metric in STEP_COLUMNS and metric not in LAYER_METRICS:
        steps, data = h.scalars.valid()
        return pd.DataFrame({metric: data[:, STEP_COLUMNS.index(metric)]}, index=pd.Index(steps, name="step"))
    if metric not in LAYER_METRICS:
        raise ValueError(f"gradsight: history({metric!r}): unknown metric. Layer metrics: "
                         f"{', '.join(LAYER_METRICS)}; step metrics: {', '.join(STEP_COLUMNS)}"
                         f"; per rank (rank=): {', '.join(RANK_METRICS)}.")
    steps, data = h.layer_metrics.valid()
    k = LAYER_METRICS.index(metric)
    return pd.DataFrame(data[:, k, :].astype(np.float64), index=pd.Index(steps, name="step"), columns=list(h.names))


def _histogram_steps(h: RunHistory, i: int, k: int) -> list[int]:
    steps, counts = h.hist_counts.valid()
    return [int(s) for s, c in zip(steps, counts, strict=True) if c[i, k, 0] >= 0]


def _of_index(of: str) -> int:
    if of not in HIST_KINDS:
        raise ValueError(f"gradsight: of={of!r}; expected one of {', '.join(map(repr, HIST_KINDS))}.")
    return HIST_KINDS.index(of)
