"""The one collective per captured step: a fixed-size float64 vector per rank, all-gathered.

Layout (``L`` layers, ``S`` sharded parameters, ``R`` replicated parameters)::

    [header (H = 12) | act_bad (L) | grad_bad (L) | shard sums of squares (4 x S) | checksums (2 x R)]

header: step, step_s, forward_s, backward_s, allreduce_s, origin layer, origin phase, has
checksums, layout (the CRC of the sender's layout signature, see layout.py), relayout (1: this
packet only announces a new layout, the rest is zeros), dropped (1: this rank captured the step
but dropped it, see Watcher._record_step; it joins the collective with its header only), closing
(1: this rank's watcher closed; its farewell packet, see CrossRank.close). ``act_bad``/``grad_bad``:
local non-finite counts per layer (outputs, and gradients w.r.t. outputs, both from this rank's
batch before any all-reduce). Shard sums of squares: this rank's part of each sharded parameter's
(weight, gradient, update, step gradient) squares, summed across ranks into the full-tensor values.
Checksums: the exact 64-bit sum of each replicated parameter's raw bits as two 32-bit halves
(detectors/replica_divergence.py), every ``checksum_every`` captured steps, zeros otherwise.

Bytes moved per step: ``8 x (12 + 2L + 4S + 2R)`` sent per rank, ``world`` times that received:
O(layers) per rank, independent of the parameter count.

The collective runs in gradsight's own gloo process group (CrossRank makes it after the watch
handshake), on host buffers allocated once: nothing is allocated per step, the user's collectives
never queue behind gradsight's, and a farewell packet that no rank ever matches cannot shift them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

HEADER = ("step", "step_s", "forward_s", "backward_s", "allreduce_s", "origin_layer", "origin_phase",
          "has_checksums", "layout", "relayout", "dropped", "closing")
H = len(HEADER)
HI = {name: i for i, name in enumerate(HEADER)}


@dataclass
class Gathered:
    """Every rank's packet of one step, split into named [W, ...] views of the receive buffer
    (valid until the next collective: copy what is kept)."""

    header: np.ndarray       # [W, H]
    act_bad: np.ndarray      # [W, L]
    grad_bad: np.ndarray     # [W, L]
    shard: np.ndarray        # [W, S, 4]
    checks: np.ndarray | None  # [W, R, 2], None when this was not a checksum step

    def column(self, name: str) -> np.ndarray:
        return self.header[:, HI[name]]


class Packet:
    def __init__(self, n_layers: int, n_sharded: int, n_replicated: int, world: int):
        self.L, self.S, self.R, self.W = n_layers, n_sharded, n_replicated, world
        self.size = H + 2 * n_layers + 4 * n_sharded + 2 * n_replicated
        self.group = None
        self.device = torch.device("cpu")
        self._work = None
        self._bind()

    def bind(self, group, device: torch.device) -> None:
        """Run the collective in ``group`` (None: the default group) on ``device``."""
        self.group = group
        if device != self.device:
            self.device = device
            self._bind()

    def _bind(self) -> None:
        # host buffers, allocated once; the tensors handed to the collective wrap them per call and are
        # dropped after it (tensors kept on this object would be freed by the cyclic collector while
        # c10d still references them: torch aborts in THPVariable_clear)
        self.send = np.zeros(self.size)                            # packed here each step
        self._recv = np.zeros((self.W, self.size))
        self._args: tuple | None = None
        self._early: np.ndarray | None = None  # a launched collective's result, read by gather() first

    def _tensors(self) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        send = torch.from_numpy(self.send)
        if self.device.type == "cpu":
            recv = torch.from_numpy(self._recv)
            return send, list(recv.unbind(0)), recv  # rows of one buffer: read back without a copy
        recv = torch.zeros(self.W, self.size, dtype=torch.float64, device=self.device)
        return send.to(self.device), list(recv.unbind(0)), recv

    @property
    def nbytes_sent(self) -> int:
        return 8 * self.size

    def pack(self, header: dict, parts: tuple | None) -> np.ndarray:
        """``parts``: (act_bad, grad_bad, shard, checks or None), or None for a header-only packet.
        Writes into the send buffer (returned)."""
        v = self.send
        v.fill(0.0)
        for k, x in header.items():
            v[HI[k]] = x
        if parts is None:
            return v
        act_bad, grad_bad, shard, checks = parts
        L, S = self.L, self.S
        v[H:H + L] = act_bad
        v[H + L:H + 2 * L] = grad_bad
        o = H + 2 * L
        v[o:o + 4 * S] = shard.reshape(-1)
        if checks is not None:
            v[o + 4 * S:] = checks.reshape(-1)
            v[HI["has_checksums"]] = 1.0
        return v

    def launch(self, vec: np.ndarray | None = None) -> None:
        """Start the all-gather of ``vec`` (default: the send buffer) without waiting for it."""
        if vec is not None and vec is not self.send:
            self.send[:] = vec
        send, out, recv = self._tensors()
        if self.group is not None:  # our own group: its C++ call directly (the checked Python wrapper costs
            self._work = self.group.allgather([out], [send])  # more than the collective on a small packet)
        else:
            self._work = torch.distributed.all_gather(out, send, async_op=True)
        self._args = (send, out, recv)

    def arrived(self, timeout: float) -> bool:
        """Whether the launched collective completes within ``timeout`` seconds (polled, never stuck)."""
        deadline = time.monotonic() + timeout
        while self._early is None and not self._work.is_completed():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def pending(self):
        """The launched collective not waited for (its work), if any."""
        return self._work

    def wait(self) -> np.ndarray:
        """The launched collective's result: [W, size], every rank's packet (a view of the buffer)."""
        if self._early is not None:
            m, self._early = self._early, None
            return m
        return self._wait_launched()

    def _wait_launched(self) -> np.ndarray:
        work, self._work = self._work, None
        args, self._args = self._args, None
        work.wait()
        if self.device.type != "cpu":
            self._recv[:] = args[2].cpu().numpy()
        return self._recv

    def gather(self, vec: np.ndarray) -> np.ndarray:
        """The collective, waited for: [W, size]. A launched collective not read yet is waited for
        first and its result kept for :meth:`wait` (collectives complete in launch order)."""
        if self._work is not None:
            self._early = self._wait_launched().copy()
        self.launch(vec)
        return self._wait_launched()

    def farewell(self, vec: np.ndarray):
        """Post ``vec`` in a collective nobody waits for here (own buffers): the other ranks' next
        exchange receives it, whenever they get there. Returns the work (keep it alive)."""
        send = torch.from_numpy(vec.copy()).to(self.device)
        out = [torch.zeros_like(send) for _ in range(self.W)]
        return torch.distributed.all_gather(out, send, group=self.group, async_op=True), send, out

    def unpack(self, m: np.ndarray) -> Gathered:
        L, S, R = self.L, self.S, self.R
        o = H + 2 * L
        shard = m[:, o:o + 4 * S].reshape(self.W, S, 4)
        checks = m[:, o + 4 * S:].reshape(self.W, R, 2) if m[0, HI["has_checksums"]] else None
        return Gathered(m[:, :H], m[:, H:H + L], m[:, H + L:o], shard, checks)
