"""saturation: Sigmoid/Tanh (and other bounded activations) pinned at their limits.

Capture measures, on detail steps, the fraction of outputs within 1% of the output
range from a limit. There the derivative is below ~0.04 (tanh) / ~0.01 (sigmoid), so
gradients through the layer almost vanish: this finding is usually the cause behind
a ``vanishing_gradient`` in the layers before it.
"""

from __future__ import annotations

import numpy as np

from ..records.step_record import StepRecord
from .finding import FindingLog
from .layout import Layout
from .streak import Streak
from .thresholds import Thresholds

KIND = "saturation"
HINT = ("Pre-activations are too large: scale down the initialisation of the layer before, add normalisation "
        "before the activation, lower the learning rate, or use a ReLU-family activation.")


class Saturation:
    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.th = th
        self.streak = Streak(len(layout.layers))

    def update(self, rec: StepRecord, log: FindingLog) -> None:
        sat = rec.saturation
        measured = np.isfinite(sat)
        if not measured.any():
            log.hold(KIND)  # measured on detail steps only: keep open episodes open
            return
        th, lay = self.th, self.layout
        holds = measured & (sat >= th.saturation_fraction)
        self.streak.update(rec.step, holds, measured)
        for i in np.flatnonzero(holds & self.streak.confirmed(rec.step, th.window)):
            since = int(self.streak.start[i])
            msg = (f"{sat[i]:.0%} of the outputs of {lay.describe(i)} are within 1% of its output limits "
                   f"(measured since step {since}): gradients through it are scaled down almost to zero.")
            log.report(KIND, lay.name(i), "warning", msg, start=since, count=int(self.streak.count[i]),
                       hint=HINT, phase="forward", value=float(sat[i]), threshold=th.saturation_fraction)
