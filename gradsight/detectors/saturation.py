"""saturation: Sigmoid/Tanh (and other bounded activations) pinned at their limits.

Capture measures, on detail steps, the fraction of outputs within 1% of the output
range from a limit. There the derivative is below ~0.04 (tanh) / ~0.01 (sigmoid), so
gradients through the layer almost vanish: this finding is usually the cause behind
a ``vanishing_gradient`` in the layers before it. Suspected on the first measurement,
confirmed after ``window`` records; each layer is its own row (its own inputs).
"""

from __future__ import annotations

import numpy as np

from ..records.step_record import StepRecord
from .detector import Context
from .finding import Finding
from .layout import Layout
from .streak import Streak
from .thresholds import Thresholds

KIND = "saturation"
HINT = ("Pre-activations are too large: scale down the initialisation of the layer before, add normalisation "
        "before the activation, lower the learning rate, or use a ReLU-family activation.")


class Saturation:
    kinds = (KIND,)

    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.th = th
        self.streak = Streak(len(layout.layers))

    def update(self, rec: StepRecord, metrics: dict, ctx: Context) -> list[Finding]:
        sat = rec.saturation
        measured = np.isfinite(sat)
        if not measured.any():
            ctx.hold(KIND)  # measured on detail steps only: keep open episodes open
            return []
        th, lay = self.th, self.layout
        holds = measured & (sat >= th.saturation_fraction)
        self.streak.update(rec.step, holds, measured)
        confirmed = self.streak.confirmed(rec.step, th.window)
        out = []
        for i in np.flatnonzero(holds):
            since, n = int(self.streak.start[i]), int(self.streak.count[i])
            msg = (f"{sat[i]:.0%} of the outputs of {lay.describe(i)} are within 1% of its output limits "
                   f"(measured since step {since}): gradients through it are scaled down almost to zero.")
            ok = bool(confirmed[i])
            if not ok:
                msg = f"Suspected ({n} measurement(s) so far): " + msg
            out.append(Finding(step=since, last_step=rec.step, count=n, layer=lay.name(i), kind=KIND,
                               severity="warning" if ok else "info", status="confirmed" if ok else "suspected",
                               message=msg, hint=HINT, phase="forward", value=float(sat[i]),
                               threshold=th.saturation_fraction))
        return out
