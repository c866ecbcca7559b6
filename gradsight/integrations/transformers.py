"""Hugging Face Transformers: ``Trainer(..., callbacks=[GradsightCallback(**watch_kwargs)])``.

The watcher attaches at ``on_train_begin`` to the Trainer's model and to its optimizer (unwrapped
from accelerate's ``AcceleratedOptimizer``), so each gradsight step closes at the real
``optimizer.step()`` — once per ``gradient_accumulation_steps`` micro-batches, after the
Trainer's gradient clipping. The loss is read from the model's own output (``outputs.loss`` of
each training forward, averaged over the micro-batches), so a NaN loss is seen even when
``logging_nan_inf_filter`` keeps it out of the logs. With ``stop_on_nonfinite=True`` the
callback sets ``control.should_training_stop`` at the first step with a NaN/Inf.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise ImportError('gradsight.integrations.transformers needs transformers: '
                      'pip install "gradsight[transformers]"') from exc

from ..nonfinite import first_nonfinite
from ..watcher import Watcher, watch
from ._losses import StepLoss


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (which subclasses
    ``torch.optim.Optimizer`` without being one: its hooks would never fire) or a similar wrapper."""
    for _ in range(5):
        inner = getattr(optimizer, "optimizer", None)
        if inner is None or inner is optimizer:
            break
        optimizer = inner
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else None


class GradsightCallback(TrainerCallback):
    """Watch the model a ``transformers.Trainer`` trains; ``watch_kwargs`` go to
    :func:`gradsight.watch`. ``stop_on_nonfinite``: stop training at the first step whose
    loss, activations or gradients hold a NaN/Inf (``cb.stopped_at`` says which step)."""

    def __init__(self, *, stop_on_nonfinite: bool = False, **watch_kwargs: Any):
        if "optimizer" in watch_kwargs:
            raise TypeError("GradsightCallback: do not pass optimizer=; the callback takes the Trainer's.")
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
        self.watch_kwargs = watch_kwargs
        self.watcher: Watcher | None = None
        self.stopped_at: int | None = None
        self._loss = StepLoss()
        self._loss_hook = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            return
        opt = unwrap_optimizer(optimizer)
        self.watcher = watch(model, optimizer=opt, **self.watch_kwargs)
        self._loss_hook = model.register_forward_hook(self._read_loss)

    def _read_loss(self, module, args, output) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if loss is not None:
            self._loss.add(loss)

    def on_step_end(self, args, state, control, **kwargs):
        w = self.watcher
        if w is None or w.closed:
            return
        loss = self._loss.take()
        if w._optimizer_ref is None:  # no optimizer found: close the step here
            w.step(loss)
        elif loss is not None:
            w.step(loss)  # records the loss of the step the optimizer closed
        rec = w.last_record()
        if self.stop_on_nonfinite and rec is not None and rec.step == w.step_count - 1 \
                and first_nonfinite(rec, loss) is not None:
            control.should_training_stop = True
            self.stopped_at = rec.step

    def on_train_end(self, args, state, control, **kwargs):
        if self._loss_hook is not None:
            self._loss_hook.remove()
            self._loss_hook = None
        if self.watcher is not None:
            self.watcher.close()
