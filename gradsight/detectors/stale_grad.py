"""``stale_grad``: gradients not zeroed between an optimizer update and the next backward.

A forgotten (or misplaced) ``optimizer.zero_grad()`` is silent in PyTorch: each backward adds
to the gradient already in ``.grad``, so every update uses the sum of all gradients since the
last zeroing — an ever larger, stale step that no loss curve explains. Capture follows one
parameter's gradient from an update to the next by version counters
(:mod:`gradsight.kernel_hooks.grad_carry`): the record says whether the next update was given
the gradient the previous one used plus new additions. Gradient accumulation, ``zero_grad``
anywhere before the backward, ``set_to_none`` either way, zeroing through ``.data`` and a GAN's
two optimizers all stay silent; the evidence is exact, so one record confirms.
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
        if param is None:  # not judged since the last record (no update followed one)
            ctx.hold(KIND)
            return []
        if not param:
            return []
        return [Finding(step=rec.step, layer="", key="", kind=KIND, severity="warning", phase="backward",
                        message=("The gradients are not zeroed between optimizer steps: the optimizer stepped with "
                                 "the gradient the previous update already used plus this step's (checked on "
                                 f"{param!r}, last at step {rec.step}: the same tensor, never zeroed, added to by "
                                 "backward). Every update then uses the sum of all gradients since the last "
                                 "zeroing."),
                        hint=HINT)]
