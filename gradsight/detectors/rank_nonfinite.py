"""``rank_nonfinite``: which rank produced the first NaN/Inf of a multi-process run.

Under DDP one rank's non-finite gradient is averaged into every rank's parameters, so a moment
later every rank is non-finite. The statistics that still tell ranks apart are local: each
layer's output and the gradient w.r.t. its output are computed from this rank's batch before
any all-reduce (parameter gradients after backward are already averaged, so they are not used).
Each rank sends the first layer whose local value went non-finite (forward order, else backward
order); the first step at which any rank has one names the origin — the ranks that had it then,
never the ranks it spread to later. Reported once per run.
"""

from __future__ import annotations

import numpy as np

from .finding import Finding

KIND = "rank_nonfinite"
PHASES = {1: "forward", 2: "forward", 3: "backward"}   # 2: the layer's input was already non-finite
HINT = ("Inspect that rank's batch at that step (torch.isfinite(batch).all()); DDP spreads one rank's "
        "non-finite gradient to every rank at the all-reduce, so the other ranks only inherited it.")


class RankNonfinite:
    """Called once per captured step with every rank's packet (not a per-record detector: its input
    is the gathered cross-rank arrays); returns (finding, rank named) pairs like a detector's findings."""

    kinds = (KIND,)

    def __init__(self):
        self.reported = False

    def update(self, step: int, origin_layer: np.ndarray, origin_phase: np.ndarray,
               layers: tuple[str, ...]) -> list[tuple[Finding, int]]:
        """``origin_layer``/``origin_phase``: per rank, this step's first local non-finite layer and its
        phase code (0: none)."""
        if self.reported:
            return []
        bad = np.flatnonzero(origin_phase > 0)
        if not bad.size:
            return []
        self.reported = True
        first = int(bad[0])
        code = int(origin_phase[first])
        layer = layers[int(origin_layer[first])]
        what = {1: f"the output of {layer!r} in forward",
                2: f"the input of {layer!r} in forward (the batch, or code before the model)",
                3: f"the gradient w.r.t. the output of {layer!r} in backward"}[code]
        others = [int(r) for r in bad[1:]]
        also = f" ({_ranks(others)} too, at the same step)" if others else ""
        clean = [r for r in range(len(origin_phase)) if r not in bad]
        spread = (f"; {_ranks(clean)} {'was' if len(clean) == 1 else 'were'} finite at this step before the "
                  "all-reduce" if clean else "")
        return [(Finding(step=step, layer=layer, kind=KIND, severity="error",
                         message=f"rank {first} produced the first non-finite value at step {step}: "
                                 f"{what}{also}{spread}.", hint=HINT, phase=PHASES[code], value=float(first)),
                 first)]


def _ranks(ranks: list[int]) -> str:
    """"rank 0" or "ranks 0, 2"."""
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
