"""dead_units: ReLU-family units that produced no positive output for any sample in
``dead_window`` records in a row.

Capture records, per step, the maximum output of every unit (feature, or channel for
convolutions) over the batch and positions; a unit whose maximum stays <= 0 gets no
gradient through a ReLU and cannot recover by itself. State is one "records since last
positive" counter per unit, updated in place. A layer whose silent fraction reaches the
threshold is suspected at once, confirmed when the units stayed silent for the window,
or at once when every unit was silent over ``dead_samples`` samples. The episode ends
when enough units revive that the fraction falls below the threshold. Each layer is
its own cause (its own bias and inputs), so each is its own row.
"""

from __future__ import annotations

import numpy as np

from ..records.step_record import StepRecord
from .detector import Context
from .finding import Finding
from .layout import Layout
from .thresholds import Thresholds

KIND = "dead_units"
HINT = ("Pre-activations went negative for every input, usually from a too-high learning rate or a large "
        "negative bias in the layer before: lower the learning rate, re-initialise the bias (0 or slightly "
        "positive), add normalisation before the activation, or use LeakyReLU/GELU.")


class DeadUnits:
    kinds = (KIND,)

    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout
        self.th = th
        self.silent: dict[int, np.ndarray] = {}  # layer -> records since each unit was last positive

    def update(self, rec: StepRecord, metrics: dict, ctx: Context) -> list[Finding]:
        th, lay = self.th, self.layout
        out = []
        for i, peak in rec.units.items():
            if not np.isfinite(peak).all():
                continue  # a non-finite step says nothing about liveness
            silent = self.silent.get(i)
            if silent is None or silent.shape != peak.shape:
                silent = self.silent[i] = np.zeros(peak.shape, dtype=np.int64)
            silent += 1
            silent[peak > 0] = 0
            quiet = silent > 0
            frac_quiet = float(quiet.mean()) if quiet.size else 0.0
            if not quiet.any() or frac_quiet < th.dead_fraction:
                continue
            dead = silent >= th.dead_window
            n_dead = int(dead.sum())
            samples = rec.act_numel[i] / max(1, peak.size) if np.isfinite(rec.act_numel[i]) else 0.0
            at_once = quiet.all() and samples >= th.dead_samples
            confirmed = n_dead / quiet.size >= th.dead_fraction or at_once
            n = n_dead if n_dead / quiet.size >= th.dead_fraction else int(quiet.sum())
            frac = n / quiet.size
            longest = int(silent[quiet].max())
            if at_once and longest < th.dead_window:
                seen = f"over {int(samples):,} samples"
            elif confirmed:
                seen = f"for any sample in the last {th.dead_window} step(s)"
            else:
                seen = f"for any sample for up to {longest} step(s)"
            msg = (f"{n} of {quiet.size} units ({frac:.0%}) of {lay.describe(i)} produced no positive output "
                   f"{seen}{self._feeder(rec, i)}.")
            if not confirmed:
                msg = f"Suspected ({longest} of the {th.dead_window} steps needed): " + msg
            out.append(Finding(step=rec.step, layer=lay.name(i), kind=KIND,
                               severity="warning" if confirmed else "info",
                               status="confirmed" if confirmed else "suspected", message=msg, hint=HINT,
                               phase="forward", value=frac, threshold=th.dead_fraction))
        return out

    def _feeder(self, rec: StepRecord, i: int) -> str:
        src = rec.input_sources.get(i)
        if not src:
            return ""
        return "; its input comes from " + ", ".join(self.layout.describe(s) for s in src)
