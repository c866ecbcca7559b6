"""The cross-rank part of a Watcher: one packed collective per captured step, full-tensor norms
of sharded parameters, per-rank timings, and the findings only several ranks can give.

Every rank gathers every rank's packet, so every rank judges the same way and holds the same
cross-rank findings and per-rank table (``w.ranks()``, ``w.history(metric, rank=r)``).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass

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
from . import groups
from .comm_timer import CommTimer, install
from .context import RankContext
from .handshake import agreed_key
from .layout import Layout
from .packet import HI, Gathered

CROSS_KINDS = RankNonfinite.kinds + ReplicaDivergence.kinds + Straggler.kinds
"""Finding kinds only several ranks can give: every rank holds the same ones."""
QUERY_WAIT_S = 5.0  # a query waits at most this long for the last step's collective (then shows what is judged)
CLOSE_WAIT_S = 2.0  # close() waits at most this long for it (then posts its farewell behind it)
HISTORY_ROWS = 8192  # captured steps of per-rank scalars kept (a ring: W x 5 x 8 bytes a row)


class CrossRank:
    def __init__(self, ctx: RankContext, layout: Layout, checksum_every: int):
        self.ctx = ctx
        self.key = agreed_key()  # names the group below on every rank (groups.py: when to destroy it)
        self.group, self.device = groups.create(ctx.backend)
        self._retired = False
        self.layout = layout
        layout.packet.bind(self.group, self.device)
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
        self._flight: _Flight | None = None  # the launched, not yet judged exchange
        self._lock = threading.Lock()        # judging happens in the training thread or in a query's
        self._unwarned: list[Finding] = []   # judged, not yet taken by the watcher (see take)
        self._peers: list[tuple[int, tuple[int, ...]]] = []
        self._mine: tuple[int, np.ndarray] | None = None  # this rank's RANK_METRICS at its last step
        self._farewell = None               # this rank's closing packet, in flight (kept alive)
        self.disabled = ""  # why the exchange stopped (all ranks stop together), "" while it runs
        self.exchange_s = 0.0  # time spent in pack + collective + judging, for the benchmark
        self.gather_s = 0.0    # of which waiting for the collective (the other ranks' arrival included)

    # the layout's parts, by their old names (the benchmark reads them)
    layers = property(lambda self: self.layout.layers)
    packet = property(lambda self: self.layout.packet)
    S_idx = property(lambda self: self.layout.S_idx)
    R_idx = property(lambda self: self.layout.R_idx)

    @property
    def rank(self) -> int:
        return self.ctx.rank

    # --- per step ------------------------------------------------------------------------
    # A step's collective is launched when the step closes (start) and judged when the next one
    # closes (take), by then long complete: no rank waits at a step boundary for the slowest one
    # (rank skew), and nothing but packing and launching is on the step's path. Cross-rank findings
    # keep their step; their live warnings come one captured step later. Queries and close() judge
    # what is in flight first (settle), so tables are never a step behind.
    def skip(self) -> None:
        """An uncaptured step: forget its all-reduce span."""
        if self.timer is not None:
            self.timer.take()

    def dropped(self, step: int, step_s: float) -> None:
        """A step this rank captured but dropped (the model changed while it was open, ...): the other
        ranks are in this step's collective, so it joins it with its header only; no rank judges it."""
        allreduce_s = self.timer.take() if self.timer is not None else math.nan
        with self._lock:
            self._settle()
            if self.disabled:
                return
            vec = self.packet.pack({"step": step, "step_s": step_s, "allreduce_s": allreduce_s, "dropped": 1.0,
                                    "layout": self.layout.crc}, None)
            g = self.packet.unpack(self.packet.gather(vec))
            if self._open(g):
                self._captured += 1  # checksum steps stay the same on every rank

    def relayout(self, layout: Layout) -> None:
        """The watcher re-made its capture (the model was edited): announce the new layout in the next
        packet; every rank switches together once all announced the same one (see :meth:`start`)."""
        layout.packet.bind(self.group, self.device)
        self.pending = layout

    def exchange(self, rec: StepRecord, step_s: float) -> list[Finding]:
        """The step's collective, launched, waited for and judged at once; returns the new findings."""
        self.start(rec, step_s)
        self.settle()
        return self.take_found()

    def start(self, rec: StepRecord, step_s: float) -> None:
        """Judge the previous step's collective (see :meth:`take`), pack this rank's packet and launch
        this step's. With sharded parameters it is waited for here, because ``rec``'s full-tensor norms
        (completed in place) feed this rank's detectors."""
        t0 = time.perf_counter()
        allreduce_s = self.timer.take() if self.timer is not None else math.nan
        with self._lock:
            self._settle()
            if self.disabled:
                return
            header = {"step": rec.step, "step_s": step_s, "forward_s": rec.forward_s,
                      "backward_s": rec.backward_s, "allreduce_s": allreduce_s}
            self._mine = (rec.step, np.array([step_s, rec.forward_s, rec.backward_s, allreduce_s,
                                              step_s - (0.0 if math.isnan(allreduce_s) else allreduce_s)]))
            if self.pending is not None:  # in the old layout: only the header, announcing the new one
                vec = self.packet.pack(header | {"layout": self.pending.crc, "relayout": 1.0}, None)
                t1 = time.perf_counter()
                g = self.packet.unpack(self.packet.gather(vec))
                self.gather_s += time.perf_counter() - t1
                if not self._open(g) or not self._all_captured(g, rec):
                    self.exchange_s += time.perf_counter() - t0
                    return
                self.layout, self.pending = self.pending, None  # every rank announced the same one: all switch
            local = self._pack(rec, header)
            t1 = time.perf_counter()
            self.packet.launch()
            self._flight = flight = _Flight(rec.step, local)
            self.gather_s += time.perf_counter() - t1
            if len(self.S_idx):
                self._receive(flight)
                if flight.judge and not self._all_captured(flight.g, rec):
                    flight.judge = False
                elif flight.judge:
                    self._complete_sharded(rec, flight.g)
                    flight.dropped_checked = True
        self.exchange_s += time.perf_counter() - t0

    def settle(self, timeout: float | None = None) -> None:
        """Wait for the collective in flight, if any, and judge it (thread-safe: queries call it). With
        ``timeout``, give up waiting after that many seconds (a rank that is far behind or gone): the
        step stays in flight, judged later."""
        with self._lock:
            self._settle(timeout)

    def take_found(self) -> list[Finding]:
        """The cross-rank findings judged since the last call that deserve a live warning."""
        with self._lock:
            out, self._unwarned = self._unwarned, []
            return out

    def take_peers(self) -> list[tuple[int, tuple[int, ...]]]:
        """(step, other ranks that produced a NaN/Inf in it) for each step judged since the last call
        in which this rank's own values were finite but another rank's were not."""
        with self._lock:
            out, self._peers = self._peers, []
            return out

    def _settle(self, timeout: float | None = None) -> None:
        flight = self._flight
        if flight is None:
            return
        if timeout is not None and flight.g is None and not self.packet.arrived(timeout):
            return
        self._flight = None
        t0 = time.perf_counter()
        try:
            if flight.g is None:
                self._receive(flight)
            if flight.judge and not flight.dropped_checked and flight.g.column("dropped").any():
                self._captured += 1  # another rank has nothing for this step: nobody judges it
                flight.judge = False
            if not flight.judge:
                return
            self._captured += 1
            g = flight.g
            if flight.local == 0:
                peers = np.flatnonzero(g.column("origin_phase") > 0)
                if peers.size:
                    self._peers.append((flight.step, tuple(int(r) for r in peers)))
            self._unwarned += self.log.live_warnings(self._judge(flight.step, g))
        finally:
            self.exchange_s += time.perf_counter() - t0

    def _receive(self, flight: _Flight) -> None:
        t1 = time.perf_counter()
        m = self.packet.wait()
        self.gather_s += time.perf_counter() - t1
        flight.g = self.packet.unpack(m)
        flight.judge = self._open(flight.g)

    def _all_captured(self, g: Gathered, rec: StepRecord) -> bool:
        """False when another rank dropped this step: nobody judges it, and a sharded parameter's full
        norm is unknown (a shard's part is missing), never this shard's."""
        if not g.column("dropped").any():
            return True
        self._captured += 1
        for arr in (rec.param_sumsq, rec.param_grad_sumsq, rec.param_update_sumsq, rec.param_step_grad_sumsq):
            arr[self.S_idx] = np.nan
        return False

    def close(self) -> None:
        """This rank stops watching: judge what is in flight, then post a farewell packet (``closing``)
        that the other ranks' next exchange receives, whenever they get there, so that every rank drops
        the cross-rank part at the same exchange instead of waiting for this one forever. Nothing here
        waits for them. The group is retired: destroyed once every rank is done with it (groups.py)."""
        with self._lock:
            try:
                self._close()
            finally:
                if not self._retired:
                    self._retired = True
                    farewell = self._farewell[0] if self._farewell is not None else None
                    groups.retire(self.group, self.key, self.rank, self.ctx.world_size,
                                  [self.packet.pending(), farewell], keep=(self.packet, self._farewell))

    def _close(self) -> None:
        if self.disabled:
            return
        try:  # the last step's collective, unless a rank never joins it (gone, or far behind)
            self._settle(timeout=CLOSE_WAIT_S)
        except Exception:  # a failed collective, or a process group already destroyed
            self._flight = None
        if self.disabled:
            return
        self._flight = None  # not waited for: the farewell follows it, in order, on every rank
        self.disabled = "this watcher was closed"
        if self.group is None:  # no group of our own: an unmatched collective would shift the user's
            return
        if not torch.distributed.is_initialized():  # the job's groups are destroyed: nobody is waiting
            return
        vec = np.zeros(self.packet.size)
        vec[HI["closing"]] = 1.0
        vec[HI["layout"]] = self.layout.crc
        vec[HI["step"]] = -1.0
        with contextlib.suppress(Exception):  # the process group is gone: nobody waits
            self._farewell = self.packet.farewell(vec)

    def _pack(self, rec: StepRecord, header: dict) -> float:
        """Pack this rank's packet into the send buffer; returns its local origin phase (0: finite)."""
        act, grad = rec.act[:, F["sumsq"]], rec.grad[:, F["sumsq"]]
        act_bad = nonfinite_counts(rec.act) + np.isinf(act)
        grad_bad = nonfinite_counts(rec.grad) + np.isinf(grad)
        layer, phase = _local_origin(rec, act_bad, grad_bad)
        shard = np.stack([rec.param_sumsq, rec.param_grad_sumsq, rec.param_update_sumsq,
                          rec.param_step_grad_sumsq], axis=1)[self.S_idx] if len(self.S_idx) else _EMPTY
        checks = self._checksums() if self._captured % self.checksum_every == 0 and len(self.R_idx) else None
        self.packet.pack(header | {"origin_layer": layer, "origin_phase": phase, "layout": self.layout.crc},
                         (act_bad, grad_bad, shard, checks))
        return phase

    def _open(self, g: Gathered) -> bool:
        """The exchange goes on: no rank closed its watcher, and every rank sends the same layout or
        announces the same new one. Otherwise every rank (they all see the same packets) stops the
        exchange at this same collective, with the reason."""
        h = g.header
        if not h[:, _FLAGS].any() and (h[:, HI["layout"]] == h[0, HI["layout"]]).all():
            return True  # the usual case, checked in one pass
        closing = g.column("closing") > 0
        relayout = g.column("relayout") > 0
        sent = g.column("layout")
        if not closing.any() and (relayout.all() or not relayout.any()) and (sent == sent[0]).all():
            return True
        step = int(g.column("step")[self.rank])
        if closing.any():
            why = (f"rank(s) {', '.join(map(str, np.flatnonzero(closing)))} stopped watching (w.close(), or the "
                   f"watcher was garbage-collected) before step {step}")
        elif relayout.any() and not relayout.all():
            edited = ", ".join(map(str, np.flatnonzero(relayout)))
            kept = ", ".join(map(str, np.flatnonzero(~relayout)))
            why = f"the model changed on rank(s) {edited} but not (yet) on rank(s) {kept} at step {step}"
        else:
            why = "the ranks now watch different models" + (" after the change" if relayout.any() else "")
        self.pending = None
        self.disabled = f"{why}: cross-rank findings are off from here; each rank's own statistics are still captured."
        return False

    def _checksums(self) -> np.ndarray:
        """[R, 2]: each replicated parameter's exact bit checksum, as two 32-bit halves (one host read)."""
        live = self.layout.params()
        sums = torch.stack([_bit_sum(live[j]) for j in self.R_idx]).cpu().numpy().view(np.uint64)
        return np.stack([sums >> np.uint64(32), sums & np.uint64(0xFFFFFFFF)], axis=1).astype(np.float64)

    def _complete_sharded(self, rec: StepRecord, g: Gathered) -> None:
        """Sharded parameters: the full-tensor sums of squares are the sums of the shards'."""
        full = g.shard.sum(axis=0)  # [S, 4]; a shard not measured (NaN) leaves the whole unknown
        for k, arr in enumerate((rec.param_sumsq, rec.param_grad_sumsq, rec.param_update_sumsq,
                                 rec.param_step_grad_sumsq)):
            arr[self.S_idx] = full[:, k]

    def _judge(self, step: int, g: Gathered) -> list[Finding]:
        log = self.log
        log.begin(step)
        row = self._rows % HISTORY_ROWS
        self._steps[row] = step
        scalars = self._scalars[row]
        scalars[:, :4] = g.header[:, _TIMES]
        busy = scalars[:, 4]
        np.subtract(scalars[:, 0], scalars[:, 3], out=busy)
        np.copyto(busy, scalars[:, 0], where=np.isnan(scalars[:, 3]))  # all-reduce time unknown: the step
        self._rows += 1
        phase = g.column("origin_phase")
        bad = phase > 0
        found = []
        if bad.any():
            self._bad_steps += bad
            self._first_bad[bad & (self._first_bad < 0)] = step
            found += self.nonfinite.update(step, g.column("origin_layer").astype(np.int64), phase, self.layers)
        if g.checks is None:
            log.hold(self.divergence.kinds[0])  # not a checksum step: open episodes stay open
        else:
            lay = self.layout
            owners = tuple(lay.layers[int(lay.param_layer[j])] for j in lay.R_idx)
            names = tuple(lay.param_names[j] for j in lay.R_idx)
            found += self.divergence.update(step, g.checks, names, owners)
        found += self.straggler.update(step, busy)
        for finding, rank in found:
            self._rank_of[id(log.add(finding))] = rank
        return log.end()

    # --- queries -------------------------------------------------------------------------
    def frame(self, all: bool = False) -> pd.DataFrame:  # noqa: A002 - mirrors w.findings(all=True)
        """Cross-rank findings (FINDING_COLUMNS + ``rank``: the rank each one names)."""
        self.settle(QUERY_WAIT_S)
        df = self.log.frame(all=all)
        ranks = {(e.kind, e.layer, e.step): self._rank_of.get(id(e), -1) for e in self.log.episodes}
        df["rank"] = np.array([ranks.get(k, -1) for k in zip(df["kind"], df["layer"], df["step"], strict=True)],
                              dtype=np.int64)
        return df[FINDING_COLUMNS + ["rank"]]

    def history(self, metric: str, rank: int) -> pd.DataFrame:
        """``metric`` (one of RANK_METRICS) of ``rank`` over the kept steps."""
        self.settle(QUERY_WAIT_S)
        n = min(self._rows, HISTORY_ROWS)
        order = np.arange(self._rows - n, self._rows) % HISTORY_ROWS
        return pd.DataFrame({metric: self._scalars[order, rank, RANK_METRICS.index(metric)]},
                            index=pd.Index(self._steps[order], name="step"))

    def latest(self, step: int) -> np.ndarray | None:
        """This rank's RANK_METRICS at ``step``, if that was the last step exchanged (its own values:
        known before the collective completes)."""
        mine = self._mine
        return mine[1].copy() if mine is not None and mine[0] == step else None

    def ranks(self, findings: pd.DataFrame) -> pd.DataFrame:
        """One row per rank: median times over the kept steps, non-finite steps, findings naming it."""
        self.settle(QUERY_WAIT_S)
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
    if act_bad.any():
        order = np.asarray(rec.forward_order, dtype=np.intp)
        hit = order[act_bad[order] > 0]
        if hit.size:
            i = int(hit[0])
            return i, (2 if rec.input_finite[i] == 0 else 1)
    if grad_bad.any():
        order = np.asarray(rec.backward_order, dtype=np.intp)
        hit = order[grad_bad[order] > 0]
        if hit.size:
            return int(hit[0]), 3
    return -1, 0


def _bit_sum(p) -> torch.Tensor:
    """The sum of ``p``'s raw bytes read as 64-bit words (wrapping; the last < 8 bytes weighted by
    position): equal on ranks whose copies are bit-identical, in any summation order."""
    if p is None:
        return torch.zeros((), dtype=torch.int64)
    t = p.detach()
    t = t.to_local() if hasattr(t, "to_local") else t
    b = t.reshape(-1).view(torch.uint8)
    n8 = b.numel() // 8 * 8
    try:
        s = b[:n8].view(torch.int64).sum()
    except RuntimeError:  # storage not 8-byte aligned
        s = b[:n8].clone().view(torch.int64).sum()
    if n8 < b.numel():
        tail = b[n8:].to(torch.int64)
        s = s + (tail << (8 * torch.arange(tail.numel(), device=tail.device))).sum()
    return s


@dataclass
class _Flight:
    step: int
    local: float                  # this rank's own origin phase (0: its values were finite)
    g: Gathered | None = None     # the gathered packets, once waited for
    judge: bool = True            # the step is judged (no rank dropped it, the exchange is open)
    dropped_checked: bool = False  # already checked for a rank that dropped the step (sharded path)


_EMPTY = np.zeros((0, 4))
_FLAGS = [HI["closing"], HI["relayout"]]
_TIMES = [HI[k] for k in ("step_s", "forward_s", "backward_s", "allreduce_s")]  # RANK_METRICS[:4]


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
