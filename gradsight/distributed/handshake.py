"""The handshake at watch start: do all ranks watch, and watch the same model?

The cross-rank part is a collective once per captured step: if one rank does not watch (only rank
0 called ``gs.watch``) or watches another model, the others would wait in it forever. So before
the first collective, every rank writes its layout signature into the default process group's
c10d store and waits at most ``TIMEOUT`` seconds for every other rank's; then each writes its
verdict and reads everyone's, so all ranks that got this far decide the same way. Missing or
different signatures: the watcher runs without the cross-rank part and says why, once.

Keys are ``gradsight/watch/<epoch>/<n>/...``: ``n`` counts this process's handshakes in the
current epoch, so ranks that watch in step use the same key; a handshake that fails moves the
store's epoch on (compare-and-set, once), so that after one rank watched alone every rank's next
watch meets the others' at ``<epoch + 1>/0`` again. A rank that arrives after the others gave up
reads their "no" verdict and gives up too: a late or stale key can make a rank give up, never wait.
"""

from __future__ import annotations

from datetime import timedelta

import torch

TIMEOUT = 5.0   # seconds a rank waits for the others' signatures (then: no cross-rank part)
EPOCH = "gradsight/watch/epoch"
_counters: dict[int, tuple[object, str, int]] = {}   # id(store) -> (store, epoch, handshakes in that epoch)
_agreed: dict[int, str] = {}  # id(store) -> the key of this process's last handshake that agreed


def _store():
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def agree(rank: int, world: int, signature: str, timeout: float | None = None) -> str:
    """"" when every rank watches a model with this ``signature``; else why not (for the warning)."""
    timeout = TIMEOUT if timeout is None else timeout
    store = _store()
    epoch = store.compare_set(EPOCH, "", "0").decode()  # the current epoch ("0" the first time)
    _, seen, n = _counters.get(id(store), (store, epoch, 0))
    n = n if seen == epoch else 0
    _counters[id(store)] = (store, epoch, n + 1)
    key = f"gradsight/watch/{epoch}/{n}"
    why = _handshake(store, key, rank, world, signature, timeout)
    if why:
        store.compare_set(EPOCH, epoch, str(int(epoch) + 1))  # every rank's next watch starts afresh
    else:
        _agreed[id(store)] = key
    return why


def agreed_key() -> str:
    """The store key of this process's last handshake that agreed: the same on every rank, unique
    in the job (it names the group the ranks make next, see groups.py); "" if none."""
    try:
        return _agreed.get(id(_store()), "")
    except Exception:
        return ""


def _handshake(store, key: str, rank: int, world: int, signature: str, timeout: float) -> str:
    store.set(f"{key}/sig/{rank}", signature)
    others = [r for r in range(world) if r != rank]
    missing = _wait(store, [f"{key}/sig/{r}" for r in others], timeout)
    why = ""
    if missing:
        late = [r for r in others if f"{key}/sig/{r}" in missing]
        why = (f"rank(s) {', '.join(map(str, late))} did not call gs.watch within {timeout:g} s of rank {rank} "
               "(only some ranks watch, or they watch at different times)")
    else:
        sigs = {r: store.get(f"{key}/sig/{r}").decode() for r in range(world)}
        if len(set(sigs.values())) > 1:
            why = "the ranks watch different models (" + "; ".join(f"rank {r}: {s}" for r, s in sigs.items()) + ")"
    store.set(f"{key}/ok/{rank}", "0" if why else "1")
    if why:
        return why
    verdicts = [f"{key}/ok/{r}" for r in others]
    if _wait(store, verdicts, timeout):
        return f"another rank did not confirm the handshake within {timeout:g} s"
    nay = [r for r in others if store.get(f"{key}/ok/{r}") != b"1"]
    if nay:
        return f"rank(s) {', '.join(map(str, nay))} gave up waiting for the other ranks' watchers"
    return ""


def _wait(store, keys: list[str], timeout: float) -> set[str]:
    """The keys still missing after ``timeout`` seconds (empty: all there)."""
    if not keys:
        return set()
    try:
        store.wait(keys, timedelta(seconds=timeout))
        return set()
    except (RuntimeError, torch.distributed.DistError) as exc:  # DistStoreError: timed out
        if "timeout" not in str(exc).lower() and "timed out" not in str(exc).lower():
            raise
        return {k for k in keys if not store.check([k])}
