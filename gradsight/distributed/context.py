"""Where this process stands in a ``torch.distributed`` job: rank, world size, and what the
watched model is wrapped in (DDP, FSDP2/DTensor, or a wrapper gradsight cannot see through).

Read once, when ``gs.watch`` is called inside an initialised process group; a process without
one is a world of one and nothing here runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..warnings import GradsightWarning

# Wrappers whose parameters or gradients gradsight cannot read as full tensors, and what that
# hides. Matched by class name so that DeepSpeed (never imported by gradsight) is recognised too.
OPAQUE = {
    "FullyShardedDataParallel": (
        "FSDP1 flattens parameters into per-rank FlatParameter shards: the parameter, gradient and "
        "update norms and weight histograms shown are of this rank's flat shard, not of any layer, "
        "and replica checks are off; per-layer activations and output gradients are this rank's "
        "own. Use FSDP2 (fully_shard) for true full-tensor norms per layer."),
    "DeepSpeedEngine": (
        "DeepSpeed ZeRO partitions parameters, gradients and optimizer state inside its engine: "
        "the parameter, gradient and update norms shown are of this rank's partitions, not the "
        "layer's full tensors, and replica checks are off. Activations and output gradients are "
        "this rank's own."),
    "PipelineStage": (
        "pipeline parallelism: each rank holds only its stage's layers; gradsight sees this stage "
        "only, and cross-rank findings compare ranks that run different layers (replica checks off)."),
    "_PipelineStageBase": (
        "pipeline parallelism: each rank holds only its stage's layers; gradsight sees this stage "
        "only, and cross-rank findings compare ranks that run different layers (replica checks off)."),
}


@dataclass(frozen=True)
class RankContext:
    """This process's place in the job, as seen when the watcher was created."""

    rank: int
    world_size: int
    backend: str
    ddp: nn.Module | None          # the DistributedDataParallel wrapper, if any
    sharded: bool                  # some parameters are sharded DTensors (FSDP2 / tensor parallel)
    opaque: str                    # why some statistics cannot be seen ("" when none)

    @property
    def replicated(self) -> bool:
        """Replica checksums make sense: every rank holds the same full parameters."""
        return self.world_size > 1 and not self.opaque


def detect(model: nn.Module) -> RankContext | None:
    """The job this model trains in, or None outside an initialised process group (or world 1)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    if world < 2:
        return None
    ddp, opaque, sharded = None, "", False
    from torch.nn.parallel import DistributedDataParallel

    for m in model.modules():
        if isinstance(m, DistributedDataParallel) and ddp is None:
            ddp = m
        for cls in type(m).__mro__:
            if cls.__name__ in OPAQUE and not opaque:
                opaque = OPAQUE[cls.__name__]
    if not opaque:
        for cls in type(model).__mro__:  # DeepSpeedEngine subclasses nn.Module
            if cls.__name__ in OPAQUE:
                opaque = OPAQUE[cls.__name__]
                break
    sharded = any(is_sharded(p) for p in model.parameters())
    return RankContext(rank=dist.get_rank(), world_size=world, backend=str(dist.get_backend()), ddp=ddp,
                       sharded=sharded, opaque=opaque)


def is_sharded(t: torch.Tensor) -> bool:
    """A DTensor split across ranks (any ``Shard`` placement): its local part is not the whole."""
    placements = getattr(t, "placements", None)
    return placements is not None and any(p.is_shard() for p in placements)


def warn_opaque(ctx: RankContext, name: str) -> None:
    """The one honest warning for wrappers gradsight cannot see through."""
    if ctx.opaque:
        warnings.warn(f"gradsight [{name}] rank {ctx.rank}/{ctx.world_size}: {ctx.opaque}", GradsightWarning,
                      stacklevel=4)
