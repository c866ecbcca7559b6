"""Histograms over many decades, with non-finite values apart, against naive counts."""

import numpy as np
import torch

from gradsight.kernel_hooks.histogram import octave_counts
from gradsight.records.histogram import naive_counts, rebin


def test_counts_match_naive_over_sixteen_decades():
    g = torch.Generator().manual_seed(0)
    mags = 10 ** (torch.rand(5000, generator=g) * 16 - 12)  # 1e-12 .. 1e+4
    signs = torch.where(torch.rand(5000, generator=g) < 0.3, -1.0, 1.0)
    x = mags * signs
    x[:7] = 0
    x[7:10] = float("nan")
    x[10:12] = float("inf")
    x[12] = -float("inf")
    h = rebin(octave_counts([x]).numpy(), 64, exact_zero=7)
    ref = naive_counts(x.numpy())
    assert (h.nan, h.posinf, h.neginf, h.zero) == (ref["nan"], ref["posinf"], ref["neginf"], ref["zero"])
    assert int(h.counts.sum()) == ref["finite_nonzero"]
    assert h.total == x.numel()
    assert len(h.edges) == 65 and np.all(np.diff(h.edges) > 0)
    # every decade from 1e-12 to 1e4 is resolved by several bins (the point of log bins)
    pos = h.edges[h.edges > 0]
    assert pos.min() < 1e-11 and pos.max() >= 1e4  # first positive bin is (0, 10**lo + one bin]
    assert len(pos) >= 31


def test_values_land_in_their_bins():
    # values at the centre of coarse bins must be counted in exactly those bins
    probe = np.array([-3e3, -2e-7, 1e-9, 4e-2, 5e1], dtype=np.float32)
    x = torch.from_numpy(np.concatenate([probe, [1e-12, 1e4], -np.array([1e-12, 1e4], dtype=np.float32)]))
    h = rebin(octave_counts([x]).numpy(), 32)
    for v in probe:
        b = np.searchsorted(h.edges, v, side="right") - 1
        lo, hi = h.edges[b], h.edges[b + 1]
        assert lo <= v <= hi and h.counts[b] >= 1, (v, lo, hi)
    assert int(h.counts.sum()) == x.numel()


def test_half_precision_and_subnormals():
    x = torch.tensor([1e-30, 1e-45, 0.0, 1.0], dtype=torch.float32)  # 1e-45 is a float32 subnormal
    h = rebin(octave_counts([x]).numpy(), 16, exact_zero=1)
    assert h.zero == 1 and h.subnormal == 1 and int(h.counts.sum()) == 2
    xb = torch.tensor([1e-3, -2.0, 0.0], dtype=torch.bfloat16)
    hb = rebin(octave_counts([xb]).numpy(), 16)
    assert int(hb.counts.sum()) == 2 and hb.zero == 1


def test_several_tensors_share_one_histogram():
    a, b = torch.randn(100), torch.randn(50) * 1e-6
    h = rebin(octave_counts([a, b]).numpy(), 64)
    assert h.total == 150


def test_a_large_tensor_is_binned_from_a_strided_sample_with_the_same_shape():
    """Above SAMPLE elements the bins come from every p-th value (p prime, no RNG): the
    shape matches the naive histogram of all values, the total is the tensor's size, and
    a watcher's histogram keeps zeros and NaN/Inf exact from the full statistics."""
    from gradsight.kernel_hooks.histogram import sample_stride
    from gradsight.records.histogram import SAMPLE

    g = torch.Generator().manual_seed(1)
    n = 40 * SAMPLE + 17
    x = torch.randn(n, generator=g) * torch.where(torch.rand(n, generator=g) < 0.5, 1e-3, 10.0)
    x[torch.rand(n, generator=g) < 0.3] = 0.0  # a ReLU-like share of exact zeros
    state = torch.get_rng_state()
    fine = octave_counts([x]).numpy()
    assert torch.equal(torch.get_rng_state(), state), "sampling must not touch the global RNG"
    p = sample_stride(n)
    assert p > 1 and all(p % d for d in range(2, p)) and -(-n // p) <= SAMPLE
    exact_zero = int((x == 0).sum())
    h = rebin(fine, 64, exact_zero=exact_zero, exact_nonfinite=(0, 0, 0), exact_total=n,
              exact_max_abs=float(x.abs().max()))
    assert h.sampled == n and h.zero == exact_zero and h.subnormal == 0
    assert h.total == n, "scaled to the exact number of finite non-zero values"
    # same shape as the histogram of every value (fine bins of all values, binned the same way)
    every = np.bincount((x.numpy().view(np.int32) >> 21) + 1024, minlength=2048)
    full = rebin(every, 64, exact_zero=exact_zero)
    assert full.total == n and not full.sampled
    assert h.edges[-1] == full.edges[-1], "the largest magnitude (exact max) is on the grid, sampled or not"

    # the shape: share of the values in each (sign, octave), sampled vs every value
    sampled_octaves = fine[:2048].reshape(-1, 4).sum(1)
    every_octaves = every.reshape(-1, 4).sum(1)
    zero_octave = 1024 // 4  # +0 and the smallest subnormals: exact counts replace it
    for o in (sampled_octaves, every_octaves):
        o[zero_octave] = 0
    diff = sampled_octaves / sampled_octaves.sum() - every_octaves / every_octaves.sum()
    assert np.abs(diff).max() < 0.01
    # deterministic: the same tensor gives the same counts
    assert np.array_equal(octave_counts([x]).numpy(), fine)


def test_a_watcher_histogram_of_a_large_layer_says_it_is_sampled_and_keeps_exact_counts():
    import gradsight as gs
    from gradsight.records.histogram import SAMPLE

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 4 * SAMPLE // 64), torch.nn.ReLU())
    w = gs.watch(model, histogram_every=1)
    x = torch.randn(64, 64)
    out = model(x)
    out.sum().backward()
    w.step()
    h = w.histogram("1", of="activation", step=0)
    relu = torch.relu(model[0](x)).detach()
    assert h.sampled == relu.numel() and h.zero == int((relu == 0).sum())
    assert (h.nan, h.posinf, h.neginf, h.subnormal) == (0, 0, 0, 0)
    small = w.histogram("0", of="grad", step=0)  # 64 x 4096 values: above SAMPLE too
    assert small.sampled and small.total == relu.numel()
    w.close()


def test_grid_count_is_searchsorted_on_every_row():
    """rebin_many's vectorised coarse-bin assignment equals np.searchsorted(side="right")
    row by row, values exactly on grid points and outside the grid included."""
    from gradsight.records.histogram import _grid_count

    rng = np.random.default_rng(3)
    H, n = 30, 33
    lo = rng.uniform(-40, 10, H)
    hi = lo + rng.uniform(1e-9, 30, H)
    step = (hi - lo) / (n - 1)
    grid = np.arange(n)[None, :] * step[:, None] + lo[:, None]
    grid[:, -1] = hi
    r = rng.integers(0, H, 5000)
    x = np.where(rng.random(5000) < 0.3, grid[r, rng.integers(0, n, 5000)],  # on a grid point
                 rng.uniform(lo[r] - 2 * step[r], hi[r] + 2 * step[r]))
    want = np.array([np.searchsorted(grid[k], v, side="right") for k, v in zip(r, x, strict=True)])
    assert np.array_equal(_grid_count(grid, lo, step, r, x), want)


def test_rebinning_many_equals_rebinning_each_alone():
    """A step's histograms are rebinned together: no row may leak into another (offsets,
    per-row reductions, sampled rows scaled apart)."""
    from gradsight.records.histogram import FINE_SLOTS, rebin_many

    rng = np.random.default_rng(4)
    H = 25
    fine = np.zeros((H, FINE_SLOTS), dtype=np.int64)
    for h in range(H):
        if h % 7 == 3:
            continue  # an empty row
        k = rng.integers(1, 60)
        fine[h, rng.integers(0, 2048, k)] = rng.integers(1, 5000, k)
        if h % 2:
            fine[h, 2048], fine[h, 2049] = rng.integers(0, 9), int(fine[h, :2048].sum()) * 5
    ez = np.where(np.arange(H) % 3 == 0, -1, rng.integers(0, 50, H))
    en = np.where((np.arange(H) % 3 == 0)[:, None], -1, rng.integers(0, 3, (H, 3)))
    et = np.where(np.arange(H) % 3 == 0, -1, fine[:, :2048].sum(1) * 5 + 100)
    em = np.where(np.arange(H) % 3 == 0, np.nan, 10 ** rng.uniform(-3, 3, H))
    together = rebin_many(fine, 16, exact_zero=ez, exact_nonfinite=en, exact_total=et, exact_max_abs=em)
    for h in range(H):
        alone = rebin_many(fine[h:h + 1], 16, exact_zero=ez[h:h + 1], exact_nonfinite=en[h:h + 1],
                           exact_total=et[h:h + 1], exact_max_abs=em[h:h + 1])
        a, b = together.histogram(h), alone.histogram(0)
        assert np.array_equal(a.edges, b.edges) and np.array_equal(a.counts, b.counts), h
        assert (a.zero, a.nan, a.posinf, a.neginf, a.subnormal, a.sampled) == \
            (b.zero, b.nan, b.posinf, b.neginf, b.subnormal, b.sampled), h
        if fine[h, 2049] and et[h] >= 0:  # sampled, scaled to the exact total
            assert a.total + a.subnormal == et[h] or a.counts.sum() == 0
