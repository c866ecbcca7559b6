"""The one collective per captured step: a fixed-size float64 vector per rank, all-gathered.

Layout (``L`` layers, ``S`` sharded parameters, ``R`` replicated parameters)::

    [header (H) | act_bad (L) | grad_bad (L) | shard sums of squares (4 x S) | checksums (2 x R)]

header: step, step_s, forward_s, backward_s, allreduce_s, origin layer, origin phase, has
checksums, layout (the CRC of the sender's layout signature, see layout.py), relayout (1: this
packet only announces a new layout, the rest is zeros), dropped (1: this rank captured the step
but dropped it, see Watcher._record_step; it joins the collective with its header only). ``act_bad``/``grad_bad``: local non-finite counts per layer (outputs, and gradients
w.r.t. outputs, both from this rank's batch before any all-reduce). Shard sums of squares: this
rank's part of each sharded parameter's (weight, gradient, update, step gradient) squares, summed
across ranks into the full-tensor values. Checksums: (sum, sum of squares) of each replicated
parameter, every ``checksum_every`` captured steps, zeros otherwise.

Bytes moved per step: ``8 x (H + 2L + 4S + 2R)`` sent per rank, ``world`` times that received:
O(layers) per rank, independent of the parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

HEADER = ("step", "step_s", "forward_s", "backward_s", "allreduce_s", "origin_layer", "origin_phase",
          "has_checksums", "layout", "relayout", "dropped")
H = len(HEADER)
HI = {name: i for i, name in enumerate(HEADER)}


def all_gather_vector(vec: np.ndarray, out: list[torch.Tensor]) -> np.ndarray:
    """All-gather one float64 vector per rank into ``out`` (one preallocated tensor per rank, on
    the backend's device): [W, len(vec)] on every rank."""
    torch.distributed.all_gather(out, torch.from_numpy(vec).to(out[0].device))
    return torch.stack(out).cpu().numpy()


@dataclass
class Gathered:
    """Every rank's packet of one step, split into named [W, ...] arrays."""

    header: np.ndarray       # [W, H]
    act_bad: np.ndarray      # [W, L]
    grad_bad: np.ndarray     # [W, L]
    shard: np.ndarray        # [W, S, 4]
    checks: np.ndarray | None  # [W, R, 2], None when this was not a checksum step

    def column(self, name: str) -> np.ndarray:
        return self.header[:, HI[name]]


class Packet:
    def __init__(self, n_layers: int, n_sharded: int, n_replicated: int, world: int, device: torch.device):
        self.L, self.S, self.R, self.W = n_layers, n_sharded, n_replicated, world
        self.size = H + 2 * n_layers + 4 * n_sharded + 2 * n_replicated
        self.device = device
        self._out = [torch.zeros(self.size, dtype=torch.float64, device=device) for _ in range(world)]

    @property
    def nbytes_sent(self) -> int:
        return 8 * self.size

    def pack(self, header: dict, parts: tuple | None) -> np.ndarray:
        """``parts``: (act_bad, grad_bad, shard, checks or None), or None for a header-only packet."""
        v = np.zeros(self.size)
        for k, x in header.items():
            v[HI[k]] = x
        if parts is None:
            return v
        act_bad, grad_bad, shard, checks = parts
        o = H
        v[o:o + self.L] = act_bad
        o += self.L
        v[o:o + self.L] = grad_bad
        o += self.L
        v[o:o + 4 * self.S] = shard.reshape(-1)
        o += 4 * self.S
        if checks is not None:
            v[o:o + 2 * self.R] = checks.reshape(-1)
            v[HI["has_checksums"]] = 1.0
        return v

    def gather(self, vec: np.ndarray) -> np.ndarray:
        """The collective: [W, size], every rank's packet, on every rank."""
        return all_gather_vector(vec, self._out)

    def unpack(self, m: np.ndarray) -> Gathered:
        o = H
        act = m[:, o:o + self.L]
        o += self.L
        grad = m[:, o:o + self.L]
        o += self.L
        shard = m[:, o:o + 4 * self.S].reshape(self.W, self.S, 4)
        o += 4 * self.S
        has = bool(m[0, HI["has_checksums"]])
        checks = m[:, o:o + 2 * self.R].reshape(self.W, self.R, 2) if has else None
        return Gathered(m[:, :H], act, grad, shard, checks)
