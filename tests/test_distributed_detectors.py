"""The cross-rank detectors on hand-built gathered arrays (no processes): each against a naive
re-implementation or a fault planted by hand, and silent on healthy, noisy ranks."""

from __future__ import annotations

import numpy as np

from gradsight.detectors.finding import FindingLog
from gradsight.detectors.rank_nonfinite import RankNonfinite
from gradsight.detectors.replica_divergence import RTOL, ReplicaDivergence, mismatched
from gradsight.detectors.straggler import PERSIST, WINDOW, Straggler

LAYERS = ("", "fc1", "act", "fc2")


def _checks(world: int, params: list[np.ndarray]) -> np.ndarray:
    return np.array([[[p.sum(dtype=np.float64), (p.astype(np.float64) ** 2).sum()] for p in params]
                     for _ in range(world)])


def _naive_mismatch(checks, numel, rtol):
    W, R, _ = checks.shape
    out = np.zeros((W, R), dtype=bool)
    for r in range(W):
        for j in range(R):
            s, q = checks[r, j]
            s0, q0 = checks[0, j]
            fin, fin0 = np.isfinite(s) and np.isfinite(q), np.isfinite(s0) and np.isfinite(q0)
            if fin != fin0:
                out[r, j] = True
            elif fin:
                scale = max(abs(q), abs(q0))
                out[r, j] = abs(s - s0) > rtol * np.sqrt(numel[j] * scale) or abs(q - q0) > rtol * scale
    return out


def test_mismatch_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(np.float32) for n in (10, 300, 5000, 1)]
    numel = np.array([p.size for p in params], dtype=np.float64)
    checks = _checks(5, params)
    checks[1, 0, 0] += 1e-3                             # a changed sum
    checks[2, 2, 1] *= 1 + 1e-6                         # a changed sum of squares
    checks[3, 1, 0] *= 1 + 1e-14                        # summation-order noise: equal
    checks[4, 3] = np.nan                               # non-finite on one rank only
    got = mismatched(checks, numel)
    np.testing.assert_array_equal(got, _naive_mismatch(checks, numel, RTOL))
    assert got.sum() == 3 and got[1, 0] and got[2, 2] and got[4, 3] and not got[3].any()
    everywhere = checks.copy()
    everywhere[:, 0] = np.nan  # non-finite on every rank: the NaN detectors' business, not divergence
    assert not mismatched(everywhere, numel)[:, 0].any()


def test_replica_divergence_names_parameter_ranks_and_first_step_and_stays_one_episode():
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(n).astype(np.float32) for n in (64, 8, 32, 4)]
    names = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    owner = ("fc1", "fc1", "fc2", "fc2")
    numel = np.array([p.size for p in params], dtype=np.float64)
    det, log = ReplicaDivergence(), FindingLog()
    for step in range(12):
        log.begin(step)
        if step % 3 == 0:
            checks = _checks(3, params)
            if step >= 6:
                checks[2, 1, 0] += 1e-2  # rank 2's fc1.bias moved
            for f, rank in det.update(step, checks, numel, names, owner):
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
    assert ReplicaDivergence().update(0, _checks(4, params), np.array([1000.0]), ("w",), ("fc",)) == []


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
    assert "rank 1 produced" in f.message and "ranks 3 too" in f.message and "ranks 0, 2 were finite" in f.message


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
