"""dead_units: ReLU-family units that produced no positive output for any sample in
``dead_window`` records in a row.

Capture records, per step, the maximum output of every unit (feature, or channel for
convolutions) over the batch and positions; a unit whose maximum stays <= 0 gets no
gradient through a ReLU and cannot recover by itself. State is one "records since last
positive" counter per unit, updated in place. The episode ends when enough units revive
that the dead fraction falls below the threshold.
"""

from __future__ import annotations

import numpy as np

from ..records.step_record import StepRecord
from .finding import FindingLog
from .layout import Layout
from .thresholds import Thresholds

KIND = "dead_units"
HINT = ("Pre-activations went negative for every input, usually from a too-high learning rate or a large "
        "negative bias in the layer before: lower the learning rate, re-initialise the bias (0 or slightly "
        "positive), add normalisation before the activation, or use LeakyReLU/GELU.")


class DeadUnits:
    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.th = th
        self.silent: dict[int, np.ndarray] = {}  # layer -> records since each unit was last positive

    def update(self, rec: StepRecord, log: FindingLog) -> None:
        th, lay = self.th, self.layout
        for i, peak in rec.units.items():
            if not np.isfinite(peak).all():
                continue  # a non-finite step says nothing about liveness
            silent = self.silent.get(i)
            if silent is None or silent.shape != peak.shape:
                silent = self.silent[i] = np.zeros(peak.shape, dtype=np.int64)
            silent += 1
            silent[peak > 0] = 0
            dead = silent >= th.dead_window
            n_dead = int(dead.sum())
            frac = n_dead / max(1, dead.size)
            if n_dead and frac >= th.dead_fraction:
                feeder = self._feeder(rec, i)
                msg = (f"{n_dead} of {dead.size} units ({frac:.0%}) of {lay.describe(i)} produced no positive "
                       f"output for any sample in the last {th.dead_window} steps{feeder}.")
                log.report(KIND, lay.name(i), "warning", msg, hint=HINT, phase="forward", value=frac,
                           threshold=th.dead_fraction)

    def _feeder(self, rec: StepRecord, i: int) -> str:
        src = rec.input_sources.get(i)
        if not src:
            return ""
        return "; its input comes from " + ", ".join(self.layout.describe(s) for s in src)
