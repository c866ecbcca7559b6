"""nonfinite_loss and loss_spike: what the loss itself says.

With ``gs.watch(model, optimizer=opt)`` the step closes inside ``optimizer.step()`` and
``w.step(loss)`` records the loss afterwards: the record is then judged when its loss
arrives (:meth:`LossWatch.late`), and until then its episodes are held open. Without a
loss passed to ``w.step(loss)`` these detectors stay silent.

- ``nonfinite_loss``: the loss is NaN/Inf while every gradient is finite (for example a
  masked ``log(0)`` in a term whose gradient is masked away): the number people read
  is garbage although training goes on. With non-finite gradients, ``nan_origin`` says
  where they began instead.
- ``loss_spike``: a loss far above the range of the recent losses (``loss_spike`` times
  that range past its maximum), with the layers whose gradient norms jumped with it.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..records.step_record import StepRecord
from .detector import Context
from .finding import Finding
from .layout import Layout, fmt
from .thresholds import Thresholds

NONFINITE = "nonfinite_loss"
SPIKE = "loss_spike"
NONFINITE_HINT = ("Look for log(0), 0/0 or inf - inf in the loss: a masked term whose value is Inf still makes the "
                  "sum Inf/NaN even when its gradient is masked. Clamp (x.clamp_min(eps)), use log_softmax / "
                  "nan-safe reductions, or compute the masked term only where it is valid.")
SPIKE_HINT = ("One batch produced a loss far above the recent ones: look at that batch (outliers, bad labels, "
              "a data-pipeline bug), lower the learning rate if spikes repeat, or clip gradients so that one "
              "batch cannot throw the weights off.")


class LossWatch:
    kinds = (NONFINITE, SPIKE)

    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.th = th
        n = th.loss_window
        L = len(layout.layers)
        self.losses = np.full(n, np.nan)
        self.grads = np.full((n, L), np.nan)
        self.filled = 0
        self._pending: tuple[StepRecord, bool, np.ndarray] | None = None  # (record, non-finite, grad norms)

    def update(self, rec: StepRecord, metrics: dict, ctx: Context) -> list[Finding]:
        g = _grad_norms(metrics, len(self.layout.layers))
        if rec.loss_given:
            self._pending = None
            return self._judge(rec, ctx.nonfinite, g)
        self._pending = (rec, ctx.nonfinite, g)
        for k in self.kinds:
            ctx.hold(k)
        return []

    def late(self, rec: StepRecord) -> list[Finding]:
        """The loss of the record just processed arrived after it (``w.step(loss)`` after an
        ``optimizer=`` step closed it)."""
        p, self._pending = self._pending, None
        if p is None or p[0] is not rec or not rec.loss_given:
            return []
        return self._judge(rec, p[1], p[2])

    def _judge(self, rec: StepRecord, nonfinite: bool, g: np.ndarray) -> list[Finding]:
        loss = rec.loss
        if not np.isfinite(loss):
            if nonfinite:
                return []  # nan_origin names where the NaN/Inf began
            what = "NaN" if np.isnan(loss) else ("+Inf" if loss > 0 else "-Inf")
            msg = (f"The loss is {what} while every gradient is finite: a term of the loss is non-finite but "
                   "contributes no gradient (masked), so training goes on while the loss you read is meaningless.")
            return [Finding(step=rec.step, layer="", kind=NONFINITE, severity="warning", message=msg,
                            hint=NONFINITE_HINT, phase="forward", value=float(loss))]
        found = self._spike(rec, loss, g)
        # a spike joins the recent range too: a lasting jump (a new regime) is one row, not many
        k = self.filled % len(self.losses)
        self.losses[k] = loss
        self.grads[k] = g
        self.filled += 1
        return [found] if found is not None else []

    def _spike(self, rec: StepRecord, loss: float, g: np.ndarray) -> Finding | None:
        th = self.th
        if self.filled < max(2, th.loss_window // 2):
            return None
        recent = self.losses[np.isfinite(self.losses)]
        lo, hi = float(recent.min()), float(recent.max())
        span = max(hi - lo, 1e-6 * max(abs(hi), 1e-12))
        excess = (loss - hi) / span
        if excess < th.loss_spike:
            return None
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # layers never measured: an all-NaN column
            jump = g / np.nanmedian(np.where(np.isfinite(self.grads), self.grads, np.nan), axis=0)
        jump = np.where(np.isfinite(jump), jump, 0.0)
        lay = self.layout
        top = [int(i) for i in np.argsort(-jump)[:3] if jump[i] >= 3.0]
        jumped = ("; gradient norms jumped with it in " + ", ".join(
            f"{lay.describe(i)} ({fmt(jump[i])}x)" for i in top)) if top else ""
        msg = (f"Loss {fmt(loss)} is far above its recent range ({fmt(lo)} to {fmt(hi)} over the last "
               f"{len(recent)} steps; {fmt(excess)}x that range past its maximum){jumped}.")
        return Finding(step=rec.step, layer=lay.name(top[0]) if top else "", kind=SPIKE, severity="warning",
                       message=msg, hint=SPIKE_HINT, phase="forward", value=float(excess),
                       threshold=th.loss_spike, affected=tuple(lay.name(i) for i in top), key="")


def _grad_norms(metrics: dict, n: int) -> np.ndarray:
    """Per layer: the parameter-gradient norm where the layer has parameters, else the norm
    of the gradient at its output."""
    p = metrics.get("param_grad_norm", np.full(n, np.nan))
    o = metrics.get("grad_norm", np.full(n, np.nan))
    return np.where(np.isfinite(p), p, o).astype(np.float64)
