"""clipping: ``clip_grad_norm_`` (or any change to the gradients between backward and
``optimizer.step()``) cutting the total norm by a large factor, step after step.

Capture measures each parameter's gradient twice: when backward accumulates it
(before clipping) and when ``optimizer.step()`` reads it (after). Their ratio is the
clip factor. Clipping that fires on every step is a smaller learning rate in
disguise — and it hides the layer that produces the large gradient, so the message
names the layers that dominate the pre-clip norm. The post-clip norm is read in the
optimizer's step pre-hook, so clipping is seen only with ``gs.watch(model, optimizer=opt)``.
"""

from __future__ import annotations

import math

import numpy as np

from ..records.metrics import total_grad_norm
from ..records.step_record import StepRecord
from .detector import Context
from .finding import Finding
from .layout import Layout, fmt, per_layer_sum
from .streak import Streak
from .thresholds import Thresholds

KIND = "clipping"


class Clipping:
    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.th = th
        self.streak = Streak(1)

    kinds = (KIND,)

    def update(self, rec: StepRecord, metrics: dict, ctx: Context) -> list[Finding]:
        th = self.th
        seen = rec.param_seen[:, 3]
        if rec.optimizer_stepped is False or not seen.any():
            ctx.hold(KIND)
            return []
        pre = total_grad_norm(rec)
        post = float(np.sqrt(rec.param_step_grad_sumsq[seen].sum(dtype=np.float64)))
        if not (np.isfinite(pre) and np.isfinite(post) and post > 0 and pre > 0):
            self.streak.reset()
            return []
        factor = pre / post
        if rec.grad_scale == 1.0 and factor >= 2 and abs(math.log2(factor) - round(math.log2(factor))) < 1e-4:
            ctx.hold(KIND)  # an exact power of two: a GradScaler's unscale_, not clipping
            return []
        holds = np.array([factor >= th.clip_factor])
        self.streak.update(rec.step, holds, np.array([True]))
        if not holds[0]:
            return []
        confirmed = bool(self.streak.confirmed(rec.step, th.window)[0])
        n = int(self.streak.count[0])
        msg = (f"Gradient clipping cut the total gradient norm from {fmt(pre)} to {fmt(post)} ({fmt(factor)}x) "
               f"in each of the last {n} steps{self._dominant(rec)}.")
        hint = (f"Clipping every step by {fmt(factor)}x acts like a {fmt(factor)}x smaller learning rate and hides "
                f"the cause: raise max_norm to about the typical pre-clip norm ({fmt(pre)}) so that only spikes "
                "are clipped, or lower the learning rate instead.")
        severity = "warning" if confirmed and factor >= th.clip_factor_warning else "info"
        if not confirmed:
            msg = f"Suspected ({n} of the {th.window} steps needed): " + msg
        return [Finding(step=int(self.streak.start[0]), last_step=rec.step, count=n, layer="", kind=KIND,
                        severity=severity, status="confirmed" if confirmed else "suspected", message=msg, hint=hint,
                        phase="backward", value=float(factor), threshold=th.clip_factor)]

    def _dominant(self, rec: StepRecord) -> str:
        lay = self.layout
        sq = per_layer_sum(rec.param_grad_sumsq, rec.param_seen[:, 1], lay.param_layer, len(lay.layers))
        sq = np.where(np.isfinite(sq), sq, 0.0)
        total = sq.sum()
        if total <= 0:
            return ""
        share = sq / total
        top = [i for i in np.argsort(-share)[:3] if share[i] >= 0.1]
        if not top:
            return ""
        return "; dominated by " + ", ".join(f"{lay.describe(int(i))} ({share[i]:.0%})" for i in top)
