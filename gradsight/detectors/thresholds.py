"""Every number the detectors decide with, in one documented place.

Defaults are chosen so that healthy models (a He-initialised ReLU MLP, a CNN with
BatchNorm, a small transformer) raise nothing over their first steps, while the
textbook faults cross them by orders of magnitude (tests/test_detectors*.py).
Pass your own: ``gs.watch(model, thresholds=gs.Thresholds(dead_fraction=0.5))`` or a
dict with the same field names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """Detector thresholds. "Records" are captured steps (every step with ``every=1``).

    Margins were measured on random-init models over 60 steps of AdamW 3e-4 and SGD 0.01
    (tests/test_findings_trust.py): a He-init MLP, a ResNet-style CNN with BatchNorm, the
    benchmark MLP/CNN/transformer (benchmarks/models.py), GPT-2 and BERT from
    ``transformers`` — none raises a finding, suspected or confirmed.
    """

    window: int = 5
    """Records a gradient-scale, saturation or clipping condition must hold in a row before
    it is confirmed. Minibatch noise makes single steps jumpy; a condition that holds for
    five steps is a property of the model, not of one batch. Until then the finding is
    shown at once with ``status="suspected"`` (severity info) and the evidence so far;
    a suspicion that stops holding is dismissed (``w.findings(all=True)`` keeps it)."""

    confirm_factor: float = 100.0
    """Overwhelming evidence needs no window: a gradient-to-weight ratio this many times past
    its threshold (below ``vanishing_ratio / 100``, above ``exploding_ratio * 100``) is
    confirmed in its first record. The textbook faults cross it (a 16-layer sigmoid MLP
    measured 1e-14, a 3x-He 12-layer ReLU MLP 7e4); healthy models stay >10x inside the
    plain thresholds, so >1000x from this one."""

    depth_layers: int = 4
    """An explosion (or vanishing) through depth is confirmed at once when the ratio grows
    (shrinks) by ``depth_growth`` or more at each of this many consecutive layers with
    parameters, toward the input: one batch cannot fake a geometric trend through depth."""

    depth_growth: float = 2.0
    """Per-layer factor for ``depth_layers``. A 3x-He ReLU MLP grows ~3x per layer, a sigmoid
    stack shrinks ~4x per layer; healthy models change by well under 2x between layers."""

    vanishing_ratio: float = 1e-4
    """A layer's gradient is vanishing when its gradient-to-weight norm ratio is below this
    fraction of the largest such ratio among the non-exploding layers (for plain weight
    matrices and convolutions; other roles below). Healthy models over 60 steps of AdamW
    3e-4 and SGD 0.01 measured 1.5e-3 at the lowest (random-init BERT's intermediate
    dense layer): a 15x margin; a 16-layer sigmoid MLP reaches 1e-14 at its input.
    With SGD, 1e-4 means this layer learns 10,000x slower than the fastest one."""

    vanishing_ratio_attention: float = 1e-6
    """``vanishing_ratio`` for attention query/key projections (``query``/``key``/``q_proj``/
    ``k_proj``, fused ``nn.MultiheadAttention``): at initialisation the attention scores
    are near-uniform and the softmax passes almost no gradient to them. Random-init BERT
    measured 1.3e-5 (a 13x margin); the benchmark transformer 5e-3."""

    vanishing_ratio_embedding: float = 1e-6
    """``vanishing_ratio`` for embeddings: only the rows of tokens in the batch get a
    gradient, so the ratio falls with vocabulary size. Random-init GPT-2 and BERT (vocab
    512) measured 1.5e-2 at the lowest; the margin leaves room for 50k-token vocabularies."""

    vanishing_ratio_norm: float = 1e-5
    """``vanishing_ratio`` for normalisation gains and shifts (LayerNorm, BatchNorm, ...)
    and for bias-only layers: initialised to 1 and 0, their weight norm is large for the
    few values they hold. Healthy models measured 4.9e-4 at the lowest (a BERT
    LayerNorm; CNN BatchNorm 1.8e-3): a 49x margin."""

    exploding_ratio: float = 50.0
    """A layer's gradient is exploding when its norm exceeds this multiple of its weight
    norm: one SGD step with learning rate 0.02 would then move the weights by their own
    size. Healthy models measured at most 12.9 (the benchmark CNN's output layer at step
    0; BERT's classifier 3.4; others below 1.3): a 3.9x margin. A branch initialised with
    std 1 instead of He's ~0.18 measured 100-1000."""

    exploding_growth: float = 100.0
    """Early warning of divergence: the model's total gradient norm grew by this factor
    over consecutive increasing steps (at least two), or by ``exploding_jump`` in one.
    Diverging runs grow 10-1000x per step for several steps before the first Inf/NaN;
    healthy runs measured at most 3.7x over two rising steps."""

    exploding_jump: float = 1000.0
    """One-step growth of the total gradient norm that is an early warning by itself
    (a too-large learning rate can go from finite to Inf in two steps)."""

    dead_window: int = 20
    """A ReLU-family unit (an output feature or channel) is dead when it produced no
    positive value for any sample in this many records in a row. At batch 32, a live
    unit that fires for 5% of samples stays silent for 20 steps with probability 1e-14."""

    dead_fraction: float = 0.25
    """Report a layer when at least this fraction of its units is dead. A few dead units
    are normal after training with a high learning rate; a quarter is capacity lost."""

    saturation_fraction: float = 0.5
    """Report a Sigmoid/Tanh layer when at least this fraction of its outputs sits within 1%
    of the output limits for ``window`` records: the local derivative is then below ~0.04
    (tanh) / 0.01 (sigmoid) for most units, which is what makes gradients vanish."""

    underflow_fraction: float = 0.25
    """fp16/bf16 gradients: report a layer when at least this fraction of its non-zero
    gradient values is subnormal (below the dtype's smallest normal number), on steps
    with histograms. Subnormals keep few significant bits and the next halving is zero."""

    underflow_octaves: float = 4.0
    """fp16/bf16 gradients: also report a layer when even its largest gradient magnitude is
    within 2**this of the dtype's smallest normal number (checked every record): the
    whole distribution then sits in the range that flushes to zero."""

    skip_run: int = 5
    """GradScaler skips a step when scaled gradients overflow; a few skips while the scale
    calibrates are expected (each one halves it). This many skips in a row (a 32x smaller
    scale) escalates ``skipped_step`` from info to warning."""

    clip_factor: float = 2.0
    """``clipping`` (info) when clipping cut the total gradient norm by at least this
    factor in ``window`` records in a row: clipping every step is a smaller learning
    rate in disguise."""

    clip_factor_warning: float = 100.0
    """Escalate ``clipping`` to a warning from this factor on (max_norm 100x below the
    gradient norm: almost all of every step is thrown away). Clipping is seen only with
    ``gs.watch(model, optimizer=opt)``: the post-clip norm is read when the optimizer steps."""

    dead_samples: int = 256
    """``dead_units`` is confirmed in its first record when every unit of the layer was silent
    for at least this many samples (batch x positions per unit): a live unit that fires for
    even 5% of inputs is silent 256 times in a row with probability 2e-6."""

    loss_window: int = 20
    """``loss_spike`` compares a step's loss with the range of the last this-many finite
    losses (and needs at least half of them)."""

    loss_spike: float = 3.0
    """``loss_spike`` when a loss exceeds the recent maximum by this many times the recent
    range (max - min). Healthy runs measured at most 0.51 (random-init BERT, AdamW 3e-4; the
    other healthy models below 0.1): a 5.9x margin; one input batch scaled 30x in a He MLP
    measured 78."""

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            kind = int if f.type in ("int", int) else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or (kind is int and int(value) != value):
                raise ValueError(f"gradsight.Thresholds: {f.name} must be a positive {kind.__name__}; "
                                 f"got {value!r} (default {f.default!r}).")
        for name in ("vanishing_ratio", "vanishing_ratio_attention", "vanishing_ratio_embedding",
                     "vanishing_ratio_norm", "dead_fraction", "saturation_fraction", "underflow_fraction"):
            if getattr(self, name) > 1:
                raise ValueError(f"gradsight.Thresholds: {name} is a fraction in (0, 1]; got {getattr(self, name)!r}.")

    def replace(self, **changes: Any) -> Thresholds:
        return dataclasses.replace(self, **changes)


def as_thresholds(value: Any) -> Thresholds:
    """Accept None (defaults), a :class:`Thresholds`, or a dict of field overrides."""
    if value is None:
        return Thresholds()
    if isinstance(value, Thresholds):
        return value
    if isinstance(value, dict):
        known = {f.name for f in fields(Thresholds)}
        unknown = sorted(set(value) - known)
        if unknown:
            import difflib

            hints = [m for u in unknown for m in difflib.get_close_matches(u, known, n=1)]
            extra = f" Did you mean {', '.join(map(repr, hints))}?" if hints else ""
            raise ValueError(f"gradsight.watch: unknown threshold(s) {', '.join(map(repr, unknown))}.{extra} "
                             f"Known: {', '.join(sorted(known))}.")
        return Thresholds(**value)
    raise TypeError(f"gradsight.watch: thresholds must be a gradsight.Thresholds or a dict of its fields; "
                    f"got {type(value).__name__}.")
