"""Bounded history: thinning keeps memory fixed and the whole run covered."""

import numpy as np

from gradsight.records.history import DecimatingStore


def test_store_never_grows_and_keeps_even_coverage():
    s = DecimatingStore(64, (3,))
    before = s.nbytes
    for step in range(20_000):
        s.append(step, [step, step, step])
    steps, data = s.valid()
    assert s.nbytes == before
    assert 32 <= len(steps) <= 64
    assert steps[0] == 0 and steps[-1] >= 20_000 - s.stride
    gaps = np.diff(steps)
    assert (gaps == s.stride).all()  # evenly thinned
    assert np.array_equal(data[:, 0], steps)


def test_row_lookup():
    s = DecimatingStore(8, (1,))
    for step in range(5):
        s.append(step, [step * 10])
    assert s.row_of(3) == 3 and s.row_of(99) is None
