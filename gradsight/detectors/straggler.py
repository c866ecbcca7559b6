"""``straggler``: a rank whose own work per step stays well above the other ranks'.

Under DDP every rank's wall-clock step ends up equal (the fast ranks wait for the slow one in the
all-reduce), so step time alone cannot name the slow rank. Each rank's *busy* time does: its step
time minus the span its gradients were in flight (``allreduce_s``, which contains the waiting);
without a timed communication hook it is the step time. A rank whose median busy time over the
last ``WINDOW`` captured steps (judged once a full window exists) exceeds ``RATIO`` x the median of the other ranks' medians, by at
least ``MIN_EXCESS_S``, for ``PERSIST`` captured steps in a row, is reported.
"""

from __future__ import annotations

import numpy as np

from .finding import Finding

KIND = "straggler"
WINDOW = 20
RATIO = 1.5
MIN_EXCESS_S = 0.010
PERSIST = 5
HINT = ("A slow rank stalls every other rank at each all-reduce. Compare that rank's data loading, "
        "its batch sizes (uneven sequence lengths), CPU/GPU contention on its host, or a rank-only "
        "branch (logging, checkpointing) in the training step.")


class Straggler:
    """Called once per captured step with every rank's busy time; returns (finding, rank) pairs."""

    kinds = (KIND,)

    def __init__(self, world: int):
        self.busy = np.full((WINDOW, world), np.nan)
        self.n = 0
        self.streak = np.zeros(world, dtype=np.int64)
        self.start = np.full(world, -1, dtype=np.int64)

    def update(self, step: int, busy: np.ndarray) -> list[tuple[Finding, int]]:
        """``busy``: [W] this step's busy seconds per rank."""
        self.busy[self.n % WINDOW] = busy
        self.n += 1
        if self.n < WINDOW:  # judge full windows only: a few slow steps at start-up are not a straggler
            return []
        med = np.median(self.busy[:min(self.n, WINDOW)], axis=0)  # np.nanmedian costs ~0.7 ms a step
        W = len(med)
        out = []
        for r in range(W):
            others = np.median(np.delete(med, r)) if W > 1 else np.nan
            holds = bool(np.isfinite(med[r]) and np.isfinite(others) and med[r] > RATIO * others
                         and med[r] - others > MIN_EXCESS_S)
            if not holds:
                self.streak[r], self.start[r] = 0, -1
                continue
            if self.streak[r] == 0:
                self.start[r] = step
            self.streak[r] += 1
            if self.streak[r] >= PERSIST:
                out.append((Finding(step=int(self.start[r]), last_step=step, layer="", kind=KIND, severity="warning",
                                    message=f"rank {r} is a straggler: median busy time {med[r] * 1e3:.1f} ms per "
                                            f"step vs {others * 1e3:.1f} ms on the other ranks "
                                            f"({med[r] / others:.1f}x), over the last {min(self.n, WINDOW)} captured "
                                            "steps; every rank waits for it at the all-reduce.",
                                    hint=HINT, value=float(med[r]), threshold=float(RATIO * others),
                                    key=f"rank {r}"), r))
        return out
