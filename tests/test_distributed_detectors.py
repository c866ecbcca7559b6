"""The cross-rank detectors on hand-built gathered arrays (no processes): each against a naive
re-implementation or a fault planted by hand, and silent on healthy, noisy ranks."""

from __future__ import annotations

import numpy as np
import torch

from gradsight.detectors.finding import FindingLog
from gradsight.detectors.rank_nonfinite import RankNonfinite
from gradsight.detectors.replica_divergence import ReplicaDivergence, mismatched
from gradsight.detectors.straggler import PERSIST, WINDOW, Straggler
from gradsight.distributed.cross_rank import _bit_sum

LAYERS = ("", "fc1", "act", "fc2")


def _naive_bit_sum(t: torch.Tensor) -> int:
    """The checksum by hand: the bytes as little-endian 64-bit words (the last one zero-padded), summed
    mod 2**64."""
    raw = t.detach().contiguous().numpy().tobytes()
    raw += b"\0" * (-len(raw) % 8)
    return sum(int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)) % 2**64


def _halves(x: int) -> list[float]:
    return [float(x >> 32), float(x & 0xFFFFFFFF)]


def _checks(world: int, params: list) -> np.ndarray:
    return np.array([[_halves(_naive_bit_sum(torch.as_tensor(p))) for p in params] for _ in range(world)])


def test_bit_sum_matches_a_naive_sum_of_words_for_any_size_dtype_and_alignment():
    g = torch.Generator().manual_seed(0)
    big = torch.randn(3000, generator=g)
    cases = [torch.randn(n, generator=g) for n in (1, 2, 3, 5, 8, 1001)] + [
        torch.randn(4, 6, generator=g).double(), torch.randn(7, generator=g).half(),
        big[1:1000],                          # a view at a 4-byte offset: not 8-byte aligned
        torch.full((5,), float("nan")), torch.tensor([float("inf"), -0.0, 0.0]),
        torch.randn(6, 4, generator=g).t()]   # not contiguous
    for t in cases:
        got = int(_bit_sum(t).item()) % 2**64
        assert got == _naive_bit_sum(t), (t.dtype, tuple(t.shape))
    a = torch.randn(1000, generator=g)
    b = a.clone()
    b[500] = torch.nextafter(b[500], torch.tensor(float("inf")))  # one value, one ulp
    assert int(_bit_sum(a).item()) != int(_bit_sum(b).item())
    assert int(_bit_sum(a).item()) == int(_bit_sum(a.flip(0).flip(0).clone()).item())


def test_mismatch_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(n, generator=g) for n in (10, 300, 5000, 1)]
    ranks = [[p.clone() for p in params] for _ in range(5)]
    ranks[1][0][3] += 1e-3                                                     # a changed value
    ranks[2][2][7] = torch.nextafter(ranks[2][2][7], torch.tensor(0.0))        # one ulp
    ranks[3][1][:4] = ranks[3][1][[2, 3, 0, 1]]      # two 8-byte words swap places: the sum's blind spot
    ranks[4][3][0] = float("nan")                                              # non-finite on one rank only
    checks = np.array([[_halves(_naive_bit_sum(p)) for p in r] for r in ranks])
    got = mismatched(checks)
    naive = np.array([[_naive_bit_sum(ranks[r][j]) != _naive_bit_sum(ranks[0][j]) for j in range(4)]
                      for r in range(5)])
    np.testing.assert_array_equal(got, naive)
    assert got.sum() == 3 and got[1, 0] and got[2, 2] and got[4, 3] and not got[3].any()
    everywhere = [[p.clone() for p in params] for _ in range(3)]
    for r in everywhere:
        r[0][:] = float("nan")  # non-finite on every rank alike: the NaN detectors' business, not divergence
    checks = np.array([[_halves(_naive_bit_sum(p)) for p in r] for r in everywhere])
    assert not mismatched(checks).any()


def test_replica_divergence_names_parameter_ranks_and_first_step_and_stays_one_episode():
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(n).astype(np.float32) for n in (64, 8, 32, 4)]
    names = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    owner = ("fc1", "fc1", "fc2", "fc2")
    det, log = ReplicaDivergence(), FindingLog()
    for step in range(12):
        log.begin(step)
        if step % 3 == 0:
            checks = _checks(3, params)
            if step >= 6:
                checks[2, 1, 1] += 1  # rank 2's fc1.bias moved
            for f, rank in det.update(step, checks, names, owner):
                assert rank == 2
                log.add(f)
        else:
            log.hold("replica_divergence")  # what the cross-rank part does between checksum steps
        log.end()
    (f,) = log.episodes
    assert (f.kind, f.layer, f.step, f.last_step, f.count) == ("replica_divergence", "fc1", 6, 9, 2)
    assert "'fc1.bias'" in f.message and "rank(s) 2" in f.message and "weight" not in f.message


def test_replica_divergence_silent_on_identical_replicas():
    params = [np.linspace(-1, 1, 1000, dtype=np.float32)]
    assert ReplicaDivergence().update(0, _checks(4, params), ("w",), ("fc",)) == []


def test_rank_nonfinite_names_the_first_step_only_and_all_origin_ranks():
    det, log = RankNonfinite(), FindingLog()
    for step, phases in enumerate(([0, 0, 0, 0], [0, 1, 0, 1], [1, 1, 1, 1])):
        log.begin(step)
        found = det.update(step, np.array([1, 1, 1, 3]), np.array(phases), LAYERS)
        for f, _ in found:
            log.add(f)
        log.end()
        assert [rank for _, rank in found] == ([1] if step == 1 else [])
    (f,) = log.episodes
    assert (f.step, f.layer, f.phase, f.value) == (1, "fc1", "forward", 1.0)
    assert "rank 1 produced" in f.message and "(rank 3 too" in f.message and "ranks 0, 2 were finite" in f.message


def test_straggler_silent_on_noisy_equal_ranks_and_names_the_slow_one():
    rng = np.random.default_rng(2)
    quiet, slow = (Straggler(4), FindingLog()), (Straggler(4), FindingLog())
    for step in range(100):
        busy = 0.02 * rng.lognormal(0, 0.3, size=4)  # +-30% noise, occasional 2x spikes
        for (det, log), extra in ((quiet, 0.0), (slow, 0.03 if step >= 40 else 0.0)):
            log.begin(step)
            b = busy.copy()
            b[2] += extra
            for f, rank in det.update(step, b):
                assert rank == 2
                log.add(f)
            log.end()
    assert quiet[1].episodes == []
    (f,) = slow[1].episodes
    assert f.kind == "straggler" and f.severity == "warning" and "rank 2 is a straggler" in f.message
    assert 40 < f.step <= 40 + WINDOW and f.last_step == 99  # after the window median moved, then held
    assert f.count >= 100 - f.step - PERSIST


def test_straggler_median_matches_numpy():
    from gradsight.detectors.straggler import _median

    rng = np.random.default_rng(3)
    for n, w in ((20, 2), (20, 5), (7, 3), (1, 4)):
        a = rng.standard_normal((n, w))
        a[rng.random((n, w)) < 0.05] = np.nan
        np.testing.assert_array_equal(_median(a), np.median(a, axis=0))
