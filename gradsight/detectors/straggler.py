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
        # row r: every rank but r (the "other ranks" each rank is compared with)
        self._others = np.array([[k for k in range(world) if k != r] for r in range(world)], dtype=np.intp) \
            .reshape(world, max(world - 1, 0))

    def update(self, step: int, busy: np.ndarray) -> list[tuple[Finding, int]]:
        """``busy``: [W] this step's busy seconds per rank."""
        self.busy[self.n % WINDOW] = busy
        self.n += 1
        if self.n < WINDOW:  # judge full windows only: a few slow steps at start-up are not a straggler
            return []
        med = _median(self.busy)
        W = len(med)
        others = _median(med[self._others].T) if W > 1 else np.full(W, np.nan)
        with np.errstate(invalid="ignore"):
            holds = np.isfinite(med) & np.isfinite(others) & (med > RATIO * others) & (med - others > MIN_EXCESS_S)
        self.start = np.where(holds, np.where(self.streak == 0, step, self.start), -1)
        self.streak = np.where(holds, self.streak + 1, 0)
        out = []
        for r in np.flatnonzero(self.streak >= PERSIST):  # only ranks that are stragglers: rarely any
            out.append((Finding(step=int(self.start[r]), last_step=step, layer="", kind=KIND, severity="warning",
                                message=f"rank {r} is a straggler: median busy time {med[r] * 1e3:.1f} ms per "
                                        f"step vs {others[r] * 1e3:.1f} ms on the other ranks "
                                        f"({med[r] / others[r]:.1f}x), over the last {WINDOW} captured "
                                        "steps; every rank waits for it at the all-reduce.",
                                hint=HINT, value=float(med[r]), threshold=float(RATIO * others[r]),
                                key=f"rank {r}"), int(r)))
        return out


def _median(a: np.ndarray) -> np.ndarray:
    """np.median(a, axis=0) (NaN where a column has one) at a tenth of its cost on these small arrays."""
    n = a.shape[0]
    s = np.sort(a, axis=0)  # NaN sorts last
    med = (s[(n - 1) // 2] + s[n // 2]) * 0.5
    med[np.isnan(s[-1])] = np.nan
    return med
