"""What one rank's packet holds, derived from the watcher's capture: the layers, the parameters
(sharded ones summed across ranks, replicated ones checksummed) and the packet built on them.

Ranks can exchange packets only while their layouts agree, so a layout has a ``signature``
(layer and parameter names, counts): compared once through the c10d store when the watcher
starts (:mod:`.handshake`), and carried in every packet's header so that a model edited on every
rank (a re-made capture) re-lays every rank's packet together (:mod:`.cross_rank`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .context import RankContext, is_sharded
from .packet import Packet


@dataclass
class Layout:
    layers: tuple[str, ...]
    param_names: tuple[str, ...]
    param_layer: np.ndarray
    params: Callable[[], list]   # the live parameters, in capture order (None where freed)
    S_idx: np.ndarray            # sharded parameters (full-tensor norms summed across ranks)
    R_idx: np.ndarray            # replicated parameters (checksummed)
    numel: np.ndarray            # elements of each replicated parameter
    packet: Packet
    signature: str               # equal on every rank that watches the same model
    crc: float                   # the signature's CRC-32, exact in a float64 packet slot

    @staticmethod
    def of(capture, ctx: RankContext) -> Layout:
        """The layout of ``capture`` (a kernel_hooks Capture) in the job ``ctx``."""
        refs = capture._params
        return Layout.build(ctx, tuple(capture.names), tuple(capture.param_names), capture.param_layer,
                            lambda: [r() for r in refs])

    @staticmethod
    def build(ctx: RankContext, layers: tuple[str, ...], param_names: tuple[str, ...], param_layer: np.ndarray,
              params: Callable[[], list]) -> Layout:
        live = params()
        sharded = np.array([p is not None and is_sharded(p) for p in live], dtype=bool)
        S_idx = np.flatnonzero(sharded)
        R_idx = np.flatnonzero(~sharded) if ctx.replicated else np.zeros(0, dtype=np.int64)
        numel = np.array([p.numel() if p is not None else 0 for p in live], dtype=np.float64)[R_idx]
        packet = Packet(len(layers), len(S_idx), len(R_idx), ctx.world_size)  # CrossRank binds its group
        names = "\x00".join(layers) + "\x01" + "\x00".join(param_names)
        signature = f"{len(layers)} layers, {len(param_names)} parameters ({len(S_idx)} sharded), " \
                    f"names {zlib.crc32(names.encode()):08x}"
        crc = float(zlib.crc32(signature.encode()))
        return Layout(layers, param_names, np.asarray(param_layer), params, S_idx, R_idx, numel, packet,
                      signature, crc)
