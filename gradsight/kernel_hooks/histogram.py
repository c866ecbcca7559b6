"""Device side of the histograms: counts over 2048 quarter-octave bins, no host sync.

The float32 bit pattern of each value, shifted right by 21, is its sign, its 8-bit
exponent and the top 2 mantissa bits — a bin index into 2048 quarter-octave bins covering
every float32, including zeros/subnormals (exponent 0) and Inf/NaN (exponent 255). One
integer pass and one scatter-add into a fixed 2048-bin tensor: no min/max is needed first,
so nothing waits for the device. The host side (decoding, :func:`~..records.histogram.rebin`)
is in :mod:`gradsight.records.histogram`.

Sampling: a 64-bin shape does not need every element of a 4-million-element tensor. A
tensor above :data:`SAMPLE` elements is binned from a deterministic strided sample (every
``p``-th element, ``p`` the smallest prime giving at most ``SAMPLE`` values: no RNG, and a
prime stride does not alias with channel or row sizes), its counts scaled to the tensor's
size. Two slots after the bins carry what the host needs to stay exact where it can: the
sample's zeros (scaled, so that zeros and subnormals, which share a bin, are told apart)
and how many values were represented by sampling (0: every value was counted). The exact
zero/NaN/Inf counts come from the full one-pass statistics (see ``Capture._record``).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..records.histogram import FINE_BINS, FINE_SLOTS, SAMPLE, SHIFT

_ZERO_SLOT, _SAMPLED_SLOT = FINE_BINS, FINE_BINS + 1


@functools.lru_cache(maxsize=256)
def sample_stride(numel: int) -> int:
    """1 if ``numel`` fits in :data:`SAMPLE`; else the smallest prime ``p`` with ``ceil(numel / p) <= SAMPLE``."""
    if numel <= SAMPLE:
        return 1
    p = max(2, -(-numel // SAMPLE))
    while any(p % d == 0 for d in range(2, int(p**0.5) + 1)):
        p += 1
    return p


def octave_counts(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Return int64 counts over the 2048 quarter-octave bins (+ the two slots above) for all
    ``tensors`` together."""
    device = tensors[0].device
    on_cpu = device.type == "cpu"
    counts = np.zeros(FINE_SLOTS, dtype=np.int64) if on_cpu else \
        torch.zeros(FINE_SLOTS, dtype=torch.int64, device=device)
    for t in tensors:
        if on_cpu:
            _count_on_host(t, counts)
            continue
        flat, n, stride = _sample(t)
        if n == 0:
            continue
        idx = (flat.view(torch.int32) >> SHIFT) + (FINE_BINS // 2)  # arithmetic shift: sign -> low half
        # torch.bincount sizes its output from max(idx): a device sync. index_add_ does not.
        ones = torch.ones((), dtype=torch.int64, device=device).expand(idx.numel())
        if stride > 1:
            m = flat.numel()
            fine = torch.zeros(FINE_BINS, dtype=torch.int64, device=device).index_add_(0, idx, ones)
            counts[:FINE_BINS] += torch.round(fine.double() * (n / m)).long()
            counts[_ZERO_SLOT] += torch.round((flat == 0).sum().double() * (n / m)).long()
            counts[_SAMPLED_SLOT] += n
        else:
            counts[:FINE_BINS].index_add_(0, idx, ones)
    return torch.from_numpy(counts) if on_cpu else counts


def _sample(t: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """The float32 values ``t``'s histogram is counted from (all, or every ``stride``-th), the
    number of values ``n`` they stand for, and the stride. Only the sample is converted:
    exact for half types, float64 rounds to the nearest float32."""
    flat = t.detach()
    if flat.is_complex():  # a complex weight: its real and imaginary parts, as its norm counts them
        flat = torch.view_as_real(flat.resolve_conj())
    flat = flat.reshape(-1)  # a view when contiguous
    n = flat.numel()
    stride = sample_stride(n) if n else 1
    if stride > 1:
        flat = flat[::stride]
    if flat.dtype != torch.float32:
        flat = flat.float()
    return flat, n, stride


def _count_on_host(t: torch.Tensor, counts: np.ndarray) -> None:
    """The CPU path, in numpy: a strided view and ``bincount`` (~4x faster than torch's on
    CPU, measured) with no tensor dispatch per step."""
    flat, n, stride = _sample(t)
    if n == 0:
        return
    sample = flat.numpy()
    fine = np.bincount((sample.view(np.int32) >> SHIFT) + (FINE_BINS // 2), minlength=FINE_BINS)
    if stride > 1:
        m = sample.size
        counts[:FINE_BINS] += _scaled(fine, n, m)
        counts[_ZERO_SLOT] += round(int(np.count_nonzero(sample == 0)) * n / m)
        counts[_SAMPLED_SLOT] += n
    else:
        counts[:FINE_BINS] += fine


def _scaled(fine: np.ndarray, n: int, m: int) -> np.ndarray:
    """Sample counts scaled to ``n`` values (``m`` were counted), rounded per bin."""
    return np.rint(fine * (n / m)).astype(np.int64)
