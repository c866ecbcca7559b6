"""The cross-rank part of a Watcher: one packed collective per captured step, full-tensor norms
of sharded parameters, per-rank timings, and the findings only several ranks can give.

Every rank gathers every rank's packet, so every rank judges the same way and holds the same
cross-rank findings and per-rank table (``w.ranks()``, ``w.history(metric, rank=r)``).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch

from ..detectors.finding import FINDING_COLUMNS, Finding, FindingLog
from ..detectors.layout import nonfinite_counts
from ..detectors.rank_nonfinite import RankNonfinite
from ..detectors.replica_divergence import ReplicaDivergence
from ..detectors.straggler import Straggler
from ..records.fields import F
from ..records.queries import RANK_METRICS
from ..records.step_record import StepRecord
from .comm_timer import CommTimer, install
from .context import RankContext
from .layout import Layout
from .packet import Gathered

CROSS_KINDS = RankNonfinite.kinds + ReplicaDivergence.kinds + Straggler.kinds
"""Finding kinds only several ranks can give: every rank holds the same ones."""
HISTORY_ROWS = 8192  # captured steps of per-rank scalars kept (a ring: W x 5 x 8 bytes a row)


class CrossRank:
    def __init__(self, ctx: RankContext, layout: Layout, checksum_every: int):
        self.ctx = ctx
        self.layout = layout
        self.pending: Layout | None = None  # the re-made capture's layout, sent at the next exchange
        self.checksum_every = checksum_every
        self.timer: CommTimer | None = None
        self.setup_error: BaseException | None = None
        if ctx.ddp is not None:
            try:
                self.timer = install(ctx.ddp)
            except Exception as exc:  # all-reduce time stays unknown; training is not ours to stop
                self.setup_error = exc
        self.log = FindingLog()
        self._rank_of: dict[int, int] = {}  # id(Finding) -> the rank it names
        self.nonfinite = RankNonfinite()
        self.divergence = ReplicaDivergence()
        self.straggler = Straggler(ctx.world_size)
        W = ctx.world_size
        self._steps = np.full(HISTORY_ROWS, -1, dtype=np.int64)
        self._scalars = np.full((HISTORY_ROWS, W, len(RANK_METRICS)), np.nan)
        self._rows = 0
        self._first_bad = np.full(W, -1, dtype=np.int64)
        self._bad_steps = np.zeros(W, dtype=np.int64)
        self._captured = 0
        self.disabled = ""  # why the exchange stopped (all ranks stop together), "" while it runs
        self.exchange_s = 0.0  # time spent in pack + collective + judging, for the benchmark
        self.gather_s = 0.0    # of which in the collective (waiting for the last rank to arrive included)

    # the layout's parts, by their old names (the benchmark reads them)
    layers = property(lambda self: self.layout.layers)
    packet = property(lambda self: self.layout.packet)
    S_idx = property(lambda self: self.layout.S_idx)
    R_idx = property(lambda self: self.layout.R_idx)

    @property
    def rank(self) -> int:
        return self.ctx.rank

    # --- per step ------------------------------------------------------------------------
    def skip(self) -> None:
        """An uncaptured step: forget its all-reduce span."""
        if self.timer is not None:
            self.timer.take()

    def dropped(self, step: int, step_s: float) -> None:
        """A step this rank captured but dropped (the model changed while it was open, ...): the other
        ranks are in this step's collective, so it joins it with its header only; no rank judges it."""
        allreduce_s = self.timer.take() if self.timer is not None else math.nan
        if self.disabled:
            return
        vec = self.packet.pack({"step": step, "step_s": step_s, "allreduce_s": allreduce_s, "dropped": 1.0,
                                "layout": self.layout.crc}, None)
        g = self.packet.unpack(self.packet.gather(vec))
        if self._same_layout(g):
            self._captured += 1  # checksum steps stay the same on every rank

    def relayout(self, layout: Layout) -> None:
        """The watcher re-made its capture (the model was edited): announce the new layout in the next
        packet; every rank switches together once all announced the same one (see :meth:`exchange`)."""
        self.pending = layout

    def exchange(self, rec: StepRecord, step_s: float) -> list[Finding]:
        """The step's one collective; completes ``rec``'s sharded norms in place; returns new findings."""
        t0 = time.perf_counter()
        allreduce_s = self.timer.take() if self.timer is not None else math.nan
        if self.disabled:
            return []
        header = {"step": rec.step, "step_s": step_s, "forward_s": rec.forward_s, "backward_s": rec.backward_s,
                  "allreduce_s": allreduce_s}
        if self.pending is not None:  # in the old layout: only the header, announcing the new one
            vec = self.packet.pack(header | {"layout": self.pending.crc, "relayout": 1.0}, None)
        else:
            vec = self._packet(rec, header)
        t1 = time.perf_counter()
        g = self.packet.unpack(self.packet.gather(vec))
        self.gather_s += time.perf_counter() - t1
        if not self._same_layout(g):
            return []
        if g.column("dropped").any():  # another rank has nothing for this step: nobody judges it
            self._captured += 1
            for arr in (rec.param_sumsq, rec.param_grad_sumsq, rec.param_update_sumsq, rec.param_step_grad_sumsq):
                arr[self.S_idx] = np.nan  # a shard's part is missing: the full norm is unknown, not this shard's
            return []
        if self.pending is not None:  # every rank announced the same new layout: all switch, and send again
            self.layout, self.pending = self.pending, None
            g = self.packet.unpack(self.packet.gather(self._packet(rec, header)))
        self._captured += 1
        self._complete_sharded(rec, g)
        new = self._judge(rec.step, g)
        self.exchange_s += time.perf_counter() - t0
        return self.log.live_warnings(new)

    def _packet(self, rec: StepRecord, header: dict) -> np.ndarray:
        act_bad = nonfinite_counts(rec.act) + (~np.isfinite(rec.act[:, F["sumsq"]]) & ~np.isnan(rec.act[:, F["sumsq"]]))
        grad_bad = nonfinite_counts(rec.grad) + (~np.isfinite(rec.grad[:, F["sumsq"]])
                                                  & ~np.isnan(rec.grad[:, F["sumsq"]]))
        layer, phase = _local_origin(rec, act_bad, grad_bad)
        shard = np.stack([rec.param_sumsq, rec.param_grad_sumsq, rec.param_update_sumsq,
                          rec.param_step_grad_sumsq], axis=1)[self.S_idx]
        checks = self._checksums() if self._captured % self.checksum_every == 0 and len(self.R_idx) else None
        header = header | {"origin_layer": layer, "origin_phase": phase, "layout": self.layout.crc}
        return self.packet.pack(header, (act_bad, grad_bad, shard, checks))

    def _same_layout(self, g: Gathered) -> bool:
        """Every rank sends the same layout, or every rank announces the same new one; otherwise all
        ranks (they all see the same packets) stop the exchange together, with the reason."""
        relayout = g.column("relayout") > 0
        sent = g.column("layout")
        if (relayout.all() or not relayout.any()) and (sent == sent[0]).all():
            return True
        if relayout.any() and not relayout.all():
            edited = ", ".join(map(str, np.flatnonzero(relayout)))
            kept = ", ".join(map(str, np.flatnonzero(~relayout)))
            why = (f"the model changed on rank(s) {edited} but not (yet) on rank(s) {kept} at step "
                   f"{int(g.column('step')[self.rank])}")
        else:
            why = "the ranks now watch different models" + (" after the change" if relayout.any() else "")
        self.pending = None
        self.disabled = f"{why}: cross-rank findings are off from here; each rank's own statistics are still captured."
        return False

    def _checksums(self) -> np.ndarray:
        live = self.layout.params()
        out = []
        with torch.no_grad():
            for j in self.R_idx:
                p = live[j]
                if p is None:
                    out += [torch.zeros((), dtype=torch.float64)] * 2
                    continue
                t = p.detach()
                out += [t.sum(dtype=torch.float64), torch.linalg.vector_norm(t, dtype=torch.float64) ** 2]
        return torch.stack([o.to("cpu") for o in out]).numpy().reshape(-1, 2)  # one host read per N steps

    def _complete_sharded(self, rec: StepRecord, g: Gathered) -> None:
        """Sharded parameters: the full-tensor sums of squares are the sums of the shards'."""
        if not len(self.S_idx):
            return
        full = g.shard.sum(axis=0)  # [S, 4]; a shard not measured (NaN) leaves the whole unknown
        for k, arr in enumerate((rec.param_sumsq, rec.param_grad_sumsq, rec.param_update_sumsq,
                                 rec.param_step_grad_sumsq)):
            arr[self.S_idx] = full[:, k]

    def _judge(self, step: int, g: Gathered) -> list[Finding]:
        log = self.log
        log.begin(step)
        busy = g.column("step_s") - np.nan_to_num(g.column("allreduce_s"), nan=0.0)
        row = self._rows % HISTORY_ROWS
        self._steps[row] = step
        self._scalars[row] = np.stack([g.column("step_s"), g.column("forward_s"), g.column("backward_s"),
                                       g.column("allreduce_s"), busy], axis=1)
        self._rows += 1
        phase = g.column("origin_phase")
        bad = phase > 0
        self._bad_steps += bad
        self._first_bad[bad & (self._first_bad < 0)] = step
        found = self.nonfinite.update(step, g.column("origin_layer").astype(np.int64), phase, self.layers)
        if g.checks is None:
            log.hold(self.divergence.kinds[0])  # not a checksum step: open episodes stay open
        else:
            lay = self.layout
            owners = tuple(lay.layers[int(lay.param_layer[j])] for j in lay.R_idx)
            names = tuple(lay.param_names[j] for j in lay.R_idx)
            found += self.divergence.update(step, g.checks, lay.numel, names, owners)
        found += self.straggler.update(step, busy)
        for finding, rank in found:
            self._rank_of[id(log.add(finding))] = rank
        return log.end()

    # --- queries -------------------------------------------------------------------------
    def frame(self, all: bool = False) -> pd.DataFrame:  # noqa: A002 - mirrors w.findings(all=True)
        """Cross-rank findings (FINDING_COLUMNS + ``rank``: the rank each one names)."""
        df = self.log.frame(all=all)
        ranks = {(e.kind, e.layer, e.step): self._rank_of.get(id(e), -1) for e in self.log.episodes}
        df["rank"] = np.array([ranks.get(k, -1) for k in zip(df["kind"], df["layer"], df["step"], strict=True)],
                              dtype=np.int64)
        return df[FINDING_COLUMNS + ["rank"]]

    def history(self, metric: str, rank: int) -> pd.DataFrame:
        """``metric`` (one of RANK_METRICS) of ``rank`` over the kept steps."""
        n = min(self._rows, HISTORY_ROWS)
        order = np.arange(self._rows - n, self._rows) % HISTORY_ROWS
        return pd.DataFrame({metric: self._scalars[order, rank, RANK_METRICS.index(metric)]},
                            index=pd.Index(self._steps[order], name="step"))

    def latest(self, step: int) -> np.ndarray | None:
        """This rank's RANK_METRICS at ``step``, if that was the last step exchanged."""
        if not self._rows:
            return None
        row = (self._rows - 1) % HISTORY_ROWS
        return self._scalars[row, self.rank].copy() if self._steps[row] == step else None

    def ranks(self, findings: pd.DataFrame) -> pd.DataFrame:
        """One row per rank: median times over the kept steps, non-finite steps, findings naming it."""
        n = min(self._rows, HISTORY_ROWS)
        W = self.ctx.world_size
        with np.errstate(invalid="ignore"), _quiet():
            med = np.nanmedian(self._scalars[:n], axis=0) if n else np.full((W, len(RANK_METRICS)), np.nan)
        df = pd.DataFrame(med, columns=list(RANK_METRICS))
        df.insert(0, "rank", np.arange(W))
        df.insert(1, "steps", n)
        df["nonfinite_steps"] = self._bad_steps
        df["first_nonfinite_step"] = self._first_bad
        counts = findings[findings["severity"].isin(["error", "warning"])].groupby("rank").size() \
            if len(findings) and "rank" in findings else pd.Series(dtype="int64")
        df["findings"] = [int(counts.get(r, 0)) for r in range(W)]
        df["self"] = df["rank"] == self.rank
        return df


def _local_origin(rec: StepRecord, act_bad: np.ndarray, grad_bad: np.ndarray) -> tuple[int, int]:
    """This rank's first locally non-finite layer and phase code (see detectors/rank_nonfinite)."""
    for i in rec.forward_order:
        if act_bad[i] > 0:
            return i, (2 if rec.input_finite[i] == 0 else 1)
    for i in rec.backward_order:
        if grad_bad[i] > 0:
            return i, 3
    return -1, 0


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
