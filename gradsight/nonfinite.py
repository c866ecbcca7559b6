"""What ``gs.watch(model, on_nonfinite=...)`` does when a NaN/Inf appears in a step.

``"warn"`` (default): the detectors report it, training is untouched. ``"raise"``:
:class:`NonFiniteError` at the step where the first NaN/Inf appears, naming the layer, the
phase and the step, with the offending batch kept (a detached copy of the root module's
inputs, taken only in this mode). ``"skip"``: that ``optimizer.step()`` does not run (its
parameters' gradients are withheld from the optimizer for the call and given back right
after), and ``w.steps()`` says so (``optimizer_stepped`` 0). These are the only settings of
gradsight that change training, and only when asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .kernel_hooks.tensors import grad_values
from .records.fields import F
from .records.step_record import StepRecord

MODES = ("warn", "raise", "skip")


class NonFiniteError(RuntimeError):
    """A NaN/Inf appeared in a watched step (``gs.watch(..., on_nonfinite="raise")``).

    ``layer``, ``phase`` ("forward", "backward" or "loss") and ``step`` say where it first
    appeared; ``batch`` is a detached copy of the root module's inputs in that step: the
    positional arguments as a tuple (replay with ``model(*err.batch)``), or, when the model
    was called with keyword arguments, ``(args, kwargs)``; None if no forward was seen.
    """

    def __init__(self, message: str, *, layer: str, phase: str, step: int, batch: Any = None):
        super().__init__(message)
        self.layer = layer
        self.phase = phase
        self.step = step
        self.batch = batch


def check_mode(value: Any) -> str:
    if value not in MODES:
        raise ValueError(f"gradsight.watch: on_nonfinite must be one of {', '.join(map(repr, MODES))} "
                         f"(warn: report only; raise: gs.NonFiniteError with the batch; skip: skip that "
                         f"optimizer.step()); got {value!r}.")
    return value


def _bad(rows: np.ndarray) -> np.ndarray:
    counts = rows[:, F["nan"]] + rows[:, F["posinf"]] + rows[:, F["neginf"]]
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(counts), ~np.isfinite(rows[:, F["sumsq"]]) & ~np.isnan(rows[:, F["sumsq"]]),
                        counts > 0)


def first_nonfinite(rec: StepRecord, loss: float | None = None) -> tuple[str, str] | None:
    """(layer, phase) of the first NaN/Inf in a record: the first module in forward order whose
    output is non-finite, else the first in backward order whose output gradient is, else the
    first parameter whose gradient is, else a non-finite ``loss`` (when one was given); None if
    the step is finite."""
    act_bad, grad_bad = _bad(rec.act), _bad(rec.grad)
    for i in rec.forward_order:
        if act_bad[i]:
            return rec.layers[i], "forward"
    for i in rec.backward_order:
        if grad_bad[i]:
            return rec.layers[i], "backward"
    bad = rec.param_seen[:, 1] & ~np.isfinite(rec.param_grad_sumsq)
    if bad.any():
        return rec.layers[int(rec.param_layer[int(np.argmax(bad))])], "backward"
    if loss is not None and not np.isfinite(loss):
        return "", "loss"
    return None


def grads_finite(params: list[torch.Tensor]) -> tuple[bool, list[int]]:
    """Whether every gradient is finite (one fused norm, one host read), and the indices of
    those that are not."""
    index = [j for j, p in enumerate(params) if p.grad is not None]
    if not index:
        return True, []
    grads = [grad_values(params[j].grad.detach()) for j in index]
    try:
        norms = torch._foreach_norm(grads)
    except Exception:
        norms = [torch.linalg.vector_norm(g) for g in grads]
    finite = torch.stack([n.float().to(norms[0].device) for n in norms]).isfinite().cpu().tolist()
    bad = [j for j, ok in zip(index, finite, strict=True) if not ok]
    return not bad, bad


def copy_inputs(args: tuple, kwargs: dict) -> Any:
    """A detached copy of a forward's inputs (tensors cloned, the rest as is)."""
    def cp(x):
        return x.detach().clone() if isinstance(x, torch.Tensor) else x

    args = tuple(torch.utils._pytree.tree_map(cp, list(args)))
    if kwargs:
        return args, torch.utils._pytree.tree_map(cp, dict(kwargs))
    return args


def error_for(name: str, step: int, where: tuple[str, str], batch: Any) -> NonFiniteError:
    layer, phase = where
    at = f"layer {layer!r}" if layer else "the loss"
    return NonFiniteError(
        f"gradsight [{name}]: first NaN/Inf at {at} in the {phase} pass of step {step}. "
        "err.batch holds a detached copy of that step's model inputs to replay it; "
        "w.findings() has the origin. (on_nonfinite='raise'; use 'warn' to only report.)",
        layer=layer, phase=phase, step=step, batch=batch)
