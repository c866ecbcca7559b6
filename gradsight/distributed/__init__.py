"""gradsight on ``torch.distributed``: rank context, the one packed collective per captured step,
DDP communication-hook timing, and the cross-rank findings (rank_nonfinite, replica_divergence,
straggler). The Watcher creates a :class:`CrossRank` when it is created inside a process group."""

from ..records.queries import RANK_METRICS
from .comm_timer import timed
from .context import RankContext, detect
from .cross_rank import CrossRank

__all__ = ["CrossRank", "RANK_METRICS", "RankContext", "detect", "timed"]
