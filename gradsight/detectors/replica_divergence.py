"""``replica_divergence``: DDP replicas whose parameters are no longer identical.

Every N captured steps (``gs.watch(..., checksum_every=N)``, default 10) each rank sends two
float64 checksums per parameter, after the optimizer step: the sum of its values and the sum of
their squares. Healthy DDP replicas apply the same averaged gradient to the same weights, so their
parameters are bit-identical and so are the checksums, up to the order in which the two sums are
accumulated (float64 over float32 values: relative error well below 1e-12). A parameter differs
when either checksum of a rank differs from rank 0's by more than ``RTOL`` (1e-9) relative to
``sqrt(numel * sum of squares)`` (a bound on the sum) and to the sum of squares. Changes below that
(a few float32 ulps in a large tensor) are not seen; the sum of squares alone would miss a sign
flip, the sum alone a permutation of values of equal sum: together they miss only changes that
keep both. Reported per layer, naming the parameters, the ranks and the first step.
"""

from __future__ import annotations

import numpy as np

from .finding import Finding

KIND = "replica_divergence"
RTOL = 1e-9
HINT = ("Replicas must stay identical under DDP. Look for a communication hook that does not average "
        "every bucket, code that changes parameters on one rank only (a rank-dependent branch, a "
        "per-rank seed in an in-place init), or buffers/parameters excluded from the all-reduce.")


def mismatched(checks: np.ndarray, numel: np.ndarray, rtol: float = RTOL) -> np.ndarray:
    """[W, R] bool: rank r's parameter j differs from rank 0's. ``checks``: [W, R, 2] (sum, sum of
    squares) per rank and parameter; ``numel``: [R] elements per parameter."""
    s, q = checks[..., 0], checks[..., 1]
    ref_s, ref_q = s[0], q[0]
    scale_q = np.maximum(np.abs(q), np.abs(ref_q))
    scale_s = np.sqrt(np.maximum(numel * scale_q, 0.0))
    with np.errstate(invalid="ignore"):
        differ = (np.abs(s - ref_s) > rtol * scale_s) | (np.abs(q - ref_q) > rtol * scale_q)
    finite = np.isfinite(s) & np.isfinite(q)
    ref_finite = finite[0]
    differ |= finite != ref_finite          # non-finite on some ranks only
    differ &= ~(~finite & ~ref_finite)      # non-finite everywhere: the NaN detectors' business
    return differ


def _relative(a: np.ndarray, b: np.ndarray, numel: float) -> float:
    """The larger of the two checksums' differences, each relative to its scale (as ``mismatched``)."""
    scale_q = max(abs(a[1]), abs(b[1]), 1e-300)
    return max(abs(a[0] - b[0]) / max(np.sqrt(numel * scale_q), 1e-300), abs(a[1] - b[1]) / scale_q)


class ReplicaDivergence:
    """Called on checksum steps with every rank's checksums (between them the caller holds
    ``KIND``'s open episodes); returns (finding, first rank named) pairs."""

    kinds = (KIND,)

    def update(self, step: int, checks: np.ndarray, numel: np.ndarray, names: tuple[str, ...],
               owner_layer: tuple[str, ...]) -> list[tuple[Finding, int]]:
        differ = mismatched(checks, numel)
        out: list[tuple[Finding, int]] = []
        done: set[str] = set()
        for j in np.flatnonzero(differ.any(axis=0)):
            layer = owner_layer[j]
            params = [k for k in np.flatnonzero(differ.any(axis=0)) if owner_layer[k] == layer]
            if layer in done:
                continue
            done.add(layer)
            ranks = sorted({int(r) for k in params for r in np.flatnonzero(differ[:, k])})
            with np.errstate(invalid="ignore", divide="ignore"):
                worst = float(np.nanmax([_relative(checks[r, k], checks[0, k], numel[k])
                                         for k in params for r in ranks] + [0.0]))
            pnames = ", ".join(repr(names[k]) for k in params)
            out.append((Finding(step=step, layer=layer, kind=KIND, severity="error",
                                message=f"parameter {pnames} differs between rank 0 and rank(s) "
                                        f"{', '.join(map(str, ranks))} after the optimizer step (relative "
                                        f"difference {worst:.3g} of the checksums; tolerance {RTOL:g}).",
                                hint=HINT, value=worst, threshold=RTOL), ranks[0]))
        return out
