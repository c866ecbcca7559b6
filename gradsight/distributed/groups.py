"""gradsight's own gloo process groups: one per watcher that joins the cross-rank part, destroyed once
every rank is done with it, so a notebook that re-watches many times in one job does not pile up
groups (each holds gloo worker threads and a socket per peer).

Why not one group per process, reused: a collective an old watcher left unmatched (a farewell no rank
answered, a step one rank captured and the others did not) would pair with the next watcher's first
exchange. Why not destroy it at ``close()``: a group with a collective still pending cannot be
destroyed without waiting for it (its destructor joins the worker threads, which wait up to the
group's timeout, 30 minutes by default), and closing the connections while a peer still receives the
last collective breaks that peer's exchange.

So a closed watcher *retires* its group. Once the collectives it launched there have completed, the
rank writes ``<handshake key>/done/<rank>`` into the default group's store (a set, never a wait); a
sweep (when a watcher of this process closes or joins the cross-rank part) destroys every retired
group whose ranks all wrote theirs. A rank that died or never answers a farewell never writes its
key: the others keep that group (as every group was kept before), and nothing ever waits.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch

from .handshake import _store


@dataclass
class _Retired:
    group: Any
    key: str           # the handshake key the ranks shared when they made the group
    rank: int
    world: int
    works: list        # collectives this rank launched there that may still be pending
    keep: tuple        # their tensors, alive until they complete
    marked: bool = False  # this rank's done key is written


_retired: list[_Retired] = []
_lock = threading.Lock()


def create(backend: str) -> tuple[Any, torch.device]:
    """A new gloo group for a watcher (every rank makes it, right after the handshake): its collectives
    never queue behind the user's nor shift them. (None, device) when gloo is missing: the default
    group, on the backend's device."""
    sweep()
    try:
        return torch.distributed.new_group(backend="gloo"), torch.device("cpu")
    except Exception:
        device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in backend.lower() \
            else torch.device("cpu")
        return None, device


def retire(group: Any, key: str, rank: int, world: int, works: list, keep: tuple = ()) -> None:
    """The watcher that used ``group`` stopped: destroy the group once every rank is done with it."""
    if group is None or not key:
        return
    _retired.append(_Retired(group, key, rank, world, [w for w in works if w is not None], keep))  # atomic
    sweep()


def sweep() -> None:
    """Destroy the retired groups that every rank is done with. Never waits, never raises."""
    if not _retired or sys.is_finalizing():
        return
    # never blocks: a sweep already running (another thread, or a watcher collected in the middle of this
    # one, which closes and retires from inside it) does the work
    if not _lock.acquire(blocking=False):
        return
    try:
        with contextlib.suppress(Exception):  # a store or group already gone: the groups stay, as before
            _sweep()
    finally:
        _lock.release()


def _sweep() -> None:
    from torch.distributed import distributed_c10d as c10d

    if not torch.distributed.is_initialized():  # the default group was destroyed, and ours with it
        _retired.clear()
        return
    store = _store()
    for r in list(_retired):
        if c10d._world.pg_map.get(r.group) is None:  # destroyed with the default group (and re-made since)
            _retired.remove(r)
            continue
        if not r.marked:
            if not all(w.is_completed() for w in r.works):
                continue
            store.set(f"{r.key}/done/{r.rank}", "1")
            r.marked = True
        if store.check([f"{r.key}/done/{q}" for q in range(r.world)]):
            torch.distributed.destroy_process_group(r.group)
            _retired.remove(r)
