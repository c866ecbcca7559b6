"""gradsight's own gloo groups are retired without ever blocking the caller (the job-level behaviour,
groups destroyed once every rank is done, is tested in test_distributed.py with real processes)."""

from __future__ import annotations

import threading

from gradsight.distributed import groups


def test_retiring_never_blocks_even_inside_a_running_sweep():
    """A watcher garbage-collected in the middle of a sweep closes and retires its group from inside it
    (same thread): that must return at once, never wait for the sweep's lock (it would deadlock)."""
    done = threading.Event()

    def retire_while_a_sweep_runs():
        groups.retire(object(), "gradsight/watch/0/0", 0, 2, [])
        done.set()

    assert groups._lock.acquire(blocking=False)  # a sweep is running
    try:
        t = threading.Thread(target=retire_while_a_sweep_runs, daemon=True)
        t.start()
        t.join(5)
        assert done.is_set(), "retire() waited for the running sweep"
    finally:
        groups._lock.release()
    assert len(groups._retired) == 1
    groups.sweep()  # outside a process group: nothing to destroy, nothing kept, no error
    assert groups._retired == []
