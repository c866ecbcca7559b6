"""``stale_grad``: gradients not zeroed between an optimizer update and the next backward.

A forgotten (or misplaced) ``optimizer.zero_grad()`` is silent in PyTorch: each backward adds
to the gradient already in ``.grad``, so every update uses the sum of all gradients since the
last zeroing — an ever larger, stale step that no loss curve explains. Capture checks it with
version counters (:meth:`~gradsight.kernel_hooks.capture.Capture._check_carry`): the gradient
kept at a step's close, after the update, is still the same tensor, unmodified and non-zero,
when the next backward starts adding to it. Gradient accumulation (several backwards, then one
update, then ``zero_grad``), ``zero_grad`` before or after the forward, ``set_to_none`` either
way and zeroing through ``.data`` all stay silent; the evidence is exact, so one record confirms.
"""

from __future__ import annotations

from ..records.step_record import StepRecord
from .detector import Context
from .finding import Finding
from .layout import Layout
from .thresholds import Thresholds

KIND = "stale_grad"
HINT = ("Call optimizer.zero_grad() (or model.zero_grad()) once per optimizer step: before the backward, or "
        "right after optimizer.step(). With gradient accumulation, zero after the optimizer step, not before "
        "each micro-batch. If adding to old gradients is deliberate, this finding can be ignored.")


class StaleGrad:
    kinds = (KIND,)

    def __init__(self, layout: Layout, th: Thresholds):
        self.layout = layout

    def update(self, rec: StepRecord, metrics: dict, ctx: Context) -> list[Finding]:
        param = rec.stale_grad
        if param is None:  # not checked since the last record (no update before this backward)
            ctx.hold(KIND)
            return []
        if not param:
            return []
        return [Finding(step=rec.step, layer="", key="", kind=KIND, severity="warning", phase="backward",
                        message=("The gradients are not zeroed between optimizer steps: each backward adds to the "
                                 "gradient the previous update already used (checked on "
                                 f"{param!r}, last at step {rec.step}: the same tensor, unchanged since the update and "
                                 "non-zero, when the backward began). Every update then uses the sum of all "
                                 "gradients since the last zeroing."),
                        hint=HINT)]
