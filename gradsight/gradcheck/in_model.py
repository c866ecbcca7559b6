"""The in-model check: a layer as it sits in the model, on the inputs it saw in the last step.

The watcher captures the ``(args, kwargs)`` a layer received, cut down to a few samples
by :func:`slice_batch`, and calls :func:`check_module_call` with the live module. The
check runs on float64 copies of those inputs and of the layer's current parameters
and buffers, so neither the model nor its optimizer state nor the RNG are touched.

Memory bound: the capture keeps at most ``MAX_SAMPLES`` samples along dim 0 and at
most ``MAX_CAPTURE_ELEMENTS`` tensor elements in all (fewer samples if needed, never
fewer than one). A layer too large for full mode is compared on ``ELEMENT_SAMPLES``
random elements per tensor instead (said in the report's notes), which bounds the
check's own Jacobian blocks to ``full.MAX_FULL_ENTRIES`` entries.
"""

from __future__ import annotations

from typing import Any

import torch

from ..kernel_hooks.sampling import MAX_SAMPLES, slice_batch
from .check import gradcheck
from .errors import GradcheckError
from .full import FullModeTooLarge
from .inputs import describe
from .report import GradcheckReport

ELEMENT_SAMPLES = 256
"""Elements compared per tensor when a layer is too large for full mode."""


def check_module_call(module: torch.nn.Module, args: tuple, kwargs: dict | None = None, *, mode: str = "full",
                      max_samples: int = MAX_SAMPLES, name: str | None = None, **kw: Any) -> GradcheckReport:
    """Check ``module``'s backward on captured call arguments, as the layer is now.

    Checks every floating-point input and each parameter that requires grad (named by
    its qualified name inside the layer, e.g. ``"weight"``). ``kw`` goes to
    :func:`gradsight.gradcheck` (eps, atol, rtol, seed, samples). ``name`` (the layer's
    qualified name in the model) labels the report. The module runs in its current
    train/eval mode; BatchNorm running statistics are not updated.

    Forward hooks on the module fire for every evaluation: a watcher should pause its
    own hooks while this runs.
    """
    if not isinstance(module, torch.nn.Module):
        raise GradcheckError(
            f"check_module_call expected an nn.Module, received {describe(module)}. For a plain "
            "function use gs.gradcheck(fn, *inputs)."
        )
    if not isinstance(args, (tuple, list)):
        args = (args,)
    if not isinstance(max_samples, int) or max_samples < 1:
        raise GradcheckError(f"max_samples must be an int >= 1, received {max_samples!r}.")
    args, kwargs = slice_batch(tuple(args), kwargs, max_samples)
    try:
        report = gradcheck(module, *args, mode=mode, kwargs=kwargs, **kw)
    except FullModeTooLarge:
        if "samples" in kw:
            raise
        report = gradcheck(module, *args, mode=mode, kwargs=kwargs, samples=ELEMENT_SAMPLES, **kw)
        report.notes.insert(0, (
            f"the layer is too large for full mode on {max_samples} samples: compared "
            f"{ELEMENT_SAMPLES} random elements of each tensor (pass samples=k to choose)."
        ))
    if name:
        report.fn = f"{name} ({type(module).__name__})"
        report.layer = name
    return report
