"""Finite-difference gradient checks with structured, readable reports.

``gradcheck(fn, *inputs)`` checks a function's or module's backward standalone;
``check_module_call(layer, args, kwargs)`` checks a layer on the inputs it saw in the
model. Both return a :class:`GradcheckReport`.

Bounds: full mode perturbs at most ``MAX_FULL_ELEMENTS`` input elements and compares
at most ``MAX_FULL_ENTRIES`` Jacobian entries (else use ``mode="fast"`` or
``samples=``); the in-model check keeps ``MAX_SAMPLES`` samples and at most
``MAX_CAPTURE_ELEMENTS`` captured elements; ``recent_reports()`` keeps the last
``MAX_REPORTS``.
"""

from ..kernel_hooks.sampling import MAX_CAPTURE_ELEMENTS, MAX_SAMPLES, slice_batch
from .check import gradcheck
from .errors import GradcheckError
from .full import MAX_FULL_ELEMENTS, MAX_FULL_ENTRIES
from .in_model import ELEMENT_SAMPLES, check_module_call
from .registry import MAX_REPORTS, recent_reports
from .report import GradcheckReport, TensorCheck

__all__ = [
    "ELEMENT_SAMPLES",
    "MAX_CAPTURE_ELEMENTS",
    "MAX_FULL_ELEMENTS",
    "MAX_FULL_ENTRIES",
    "MAX_REPORTS",
    "MAX_SAMPLES",
    "GradcheckError",
    "GradcheckReport",
    "TensorCheck",
    "check_module_call",
    "gradcheck",
    "recent_reports",
    "slice_batch",
]
