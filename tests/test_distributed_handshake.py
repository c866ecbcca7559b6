"""The watch-start handshake on a real c10d FileStore, ranks as threads (no process group): ranks
that watch the same model agree; a missing or different rank makes every rank give up within the
timeout; and after a rank watched alone, the next watch of every rank meets again."""

from __future__ import annotations

import threading
import time

import pytest
import torch.distributed as dist

from gradsight.distributed import handshake


@pytest.fixture
def stores(tmp_path, monkeypatch):
    """One store object per simulated rank (as each process has its own), on one file."""
    per_rank = [dist.FileStore(str(tmp_path / "store"), 2) for _ in range(2)]
    current = threading.local()
    monkeypatch.setattr(handshake, "_store", lambda: per_rank[current.rank])
    return per_rank, current


def _together(current, sigs: dict[int, str], timeout: float = 2.0) -> dict[int, str]:
    out = {}

    def run(rank):
        current.rank = rank
        out[rank] = handshake.agree(rank, 2, sigs[rank], timeout)

    threads = [threading.Thread(target=run, args=(r,)) for r in sigs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_same_models_agree_and_different_ones_are_named(stores):
    _, current = stores
    assert _together(current, {0: "4 layers", 1: "4 layers"}) == {0: "", 1: ""}
    said = _together(current, {0: "4 layers", 1: "6 layers"})
    for why in said.values():
        assert "watch different models" in why and "rank 0: 4 layers" in why and "rank 1: 6 layers" in why


def test_a_rank_watching_alone_gives_up_in_time_and_the_next_watches_meet_again(stores):
    _, current = stores
    t0 = time.monotonic()
    alone = _together(current, {0: "m"}, timeout=0.3)
    assert "rank(s) 1 did not call gs.watch within 0.3 s" in alone[0] and time.monotonic() - t0 < 5
    # rank 1 never took part; both watch again: they meet in the new epoch, not at rank 0's old key
    assert _together(current, {0: "m", 1: "m"}) == {0: "", 1: ""}
    assert _together(current, {0: "m", 1: "m"}) == {0: "", 1: ""}


def test_a_rank_arriving_after_the_other_gave_up_gives_up_too_never_pairs_with_it(stores):
    _, current = stores
    assert _together(current, {0: "m"}, timeout=0.3)[0]
    late = _together(current, {1: "m"}, timeout=0.3)[1]  # rank 0's watcher is no longer waiting
    assert "rank(s) 0 did not call gs.watch" in late
