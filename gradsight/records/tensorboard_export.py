"""A run's history as TensorBoard event files: ``w.to_tensorboard(logdir)``,
``rec.to_tensorboard(logdir)`` and the streaming ``gs.watch(..., tensorboard=logdir)``.

Scalars: ``step/<column>`` (loss, lr, total gradient norm, loss scale, ...), per layer
``<metric>/<layer>`` for the norms, and the non-finite counts as their own scalars
(``nonfinite/grad/<layer>``, ``nonfinite/act/<layer>``: NaN + Inf values that step;
``nonfinite/weight/<layer>`` on histogram steps), so a NaN
is never silently dropped. Histograms go through ``add_histogram_raw`` with gradsight's own
bins: TensorBoard's ``add_histogram`` raises on NaN/Inf input, the pre-binned form cannot
(non-finite values are not in the bins; their counts are the scalars above). TensorBoard
(``torch.utils.tensorboard``) is imported on first use.
"""

from __future__ import annotations

import numpy as np

from .histogram import EXTRA_COUNTS, HIST_KINDS
from .metrics import LAYER_METRICS
from .run_history import STEP_COLUMNS, RunHistory

SCALAR_METRICS = ("grad_norm", "act_norm", "param_norm", "param_grad_norm", "update_ratio")


def _tag(layer: str) -> str:
    return layer if layer else "(root)"


def open_writer(logdir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError('gradsight: TensorBoard export needs tensorboard: pip install "gradsight[tensorboard]"') \
            from exc
    return SummaryWriter(log_dir=str(logdir))


def write_steps(writer, h: RunHistory, steps, with_loss: bool = True) -> int:
    """Write the stored facts of ``steps`` (scalars, layer metrics, histograms); returns how many.
    ``with_loss=False``: the loss is not known yet (it is written when it arrives)."""
    n = 0
    for step in steps:
        step = int(step)
        r = h.scalars.row_of(step)
        if r is not None:
            for k, col in enumerate(STEP_COLUMNS):
                v = float(h.scalars.data[r, k])
                if col == "loss" and not with_loss:
                    continue
                if not np.isnan(v) or col == "loss":  # a NaN loss is news; unmeasured columns are not
                    writer.add_scalar(f"step/{col}", v, step)
        r = h.layer_metrics.row_of(step)
        if r is not None:
            data = h.layer_metrics.data[r]
            for prefix in ("act", "grad"):
                bad = sum(data[LAYER_METRICS.index(f"{prefix}_{c}")] for c in ("nan", "posinf", "neginf"))
                for i, layer in enumerate(h.names):
                    if np.isfinite(bad[i]):
                        writer.add_scalar(f"nonfinite/{prefix}/{_tag(layer)}", float(bad[i]), step)
            for m in SCALAR_METRICS:
                row = data[LAYER_METRICS.index(m)]
                for i, layer in enumerate(h.names):
                    if not np.isnan(row[i]):  # NaN: not measured this step (non-finite counts say the rest)
                        writer.add_scalar(f"{m}/{_tag(layer)}", float(row[i]), step)
        r = h.hist_counts.row_of(step)
        if r is not None:
            _write_histograms(writer, h, r, step)
        n += 1
    writer.flush()
    return n


def _write_histograms(writer, h: RunHistory, r: int, step: int) -> None:
    zero_at = EXTRA_COUNTS.index("zero")
    bad_at = [EXTRA_COUNTS.index(c) for c in ("nan", "posinf", "neginf")]
    w = HIST_KINDS.index("weight")
    for i, layer in enumerate(h.names):
        for k, of in enumerate(HIST_KINDS):
            counts = h.hist_counts.data[r, i, k].astype(np.float64)
            edges = h.hist_edges.data[r, i, k]
            if counts[0] < 0:
                continue
            if k == w:  # activations and gradients have their counts from the layer metrics
                bad = int(h.hist_extra.data[r, i, k, bad_at].sum())
                writer.add_scalar(f"nonfinite/weight/{_tag(layer)}", float(bad), step)
            if not np.isfinite(edges).all():
                continue
            counts = counts.copy()
            zeros = max(0, int(h.hist_extra.data[r, i, k, zero_at]))
            counts[np.searchsorted(edges[1:], 0.0)] += zeros  # zeros go to the bin ending at 0
            if counts.sum() == 0:
                continue
            centers = (edges[:-1] + edges[1:]) / 2
            occupied = np.nonzero(counts)[0]
            writer.add_histogram_raw(
                f"{of}/{_tag(layer)}", min=float(edges[occupied[0]]), max=float(edges[occupied[-1] + 1]),
                num=int(counts.sum()), sum=float((centers * counts).sum()),
                sum_squares=float((centers ** 2 * counts).sum()),
                bucket_limits=[float(e) for e in edges[1:]], bucket_counts=[float(c) for c in counts],
                global_step=step)


def export(h: RunHistory, logdir) -> int:
    """Every stored step of a run into ``logdir``; returns the number of steps written."""
    writer = open_writer(logdir)
    try:
        steps, _ = h.scalars.valid()
        return write_steps(writer, h, steps)
    finally:
        writer.close()


class TensorBoardStream:
    """Writes each closed step of one live run as it closes (``gs.watch(..., tensorboard=logdir)``)."""

    def __init__(self, h: RunHistory, logdir):
        self._history = h
        self.writer = open_writer(logdir)
        self.errors: list[str] = []

    def write_latest(self, with_loss: bool = True) -> None:
        try:
            if self._history.latest_step is not None:
                write_steps(self.writer, self._history, [self._history.latest_step], with_loss)
        except Exception as exc:  # a logging failure must never break training
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def write_loss(self, step: int, loss: float) -> None:
        try:
            self.writer.add_scalar("step/loss", loss, step)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self.writer.close()
