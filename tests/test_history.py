"""Bounded history: memory grows on demand up to the cap, then thinning keeps it fixed and the
whole run covered."""

import numpy as np

from gradsight.records.history import DecimatingStore


def test_store_grows_to_its_cap_only_and_keeps_even_coverage():
    s = DecimatingStore(64, (3,))
    small = s.nbytes
    for step in range(64):
        s.append(step, [step, step, step])
    at_cap = s.nbytes
    assert small < at_cap == 64 * (3 * 4 + 8)  # a short run costs less than the cap
    for step in range(64, 20_000):
        s.append(step, [step, step, step])
    steps, data = s.valid()
    assert s.nbytes == at_cap  # never beyond the cap
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


def test_remap_moves_columns_by_index_and_fills_the_rest():
    s = DecimatingStore(8, (2, 3))
    for step in range(3):
        s.append(step, np.arange(6, dtype=np.float32).reshape(2, 3) + 10 * step)
    s.remap(1, 4, old=[0, 2], new=[1, 3])  # column 1 removed, two new ones
    steps, data = s.valid()
    assert data.shape == (3, 2, 4)
    assert np.array_equal(data[:, :, 1], np.stack([np.arange(0, 6, 3) + 10 * k for k in range(3)]))
    assert np.array_equal(data[:, :, 3], np.stack([np.arange(2, 6, 3) + 10 * k for k in range(3)]))
    assert np.isnan(data[:, :, [0, 2]]).all()
