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
