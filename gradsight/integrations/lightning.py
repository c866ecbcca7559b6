"""PyTorch Lightning: ``Trainer(callbacks=[GradsightCallback(**watch_kwargs)])``.

Hooks attach in ``setup`` (fit) and are removed in ``teardown``; ``cb.watcher`` stays readable
after training. A gradsight step is one optimizer step: statistics are taken on the gradients
``on_before_optimizer_step`` sees — after gradient accumulation, unscaled under AMP — and the
step closes at the end of the batch whose optimizer step ran, with the mean loss of its
micro-batches (from ``training_step``). Under ``precision="16-mixed"`` the callback takes the
precision plugin's ``GradScaler``: ``w.steps()["grad_scale"]`` is each step's loss scale, every
statistic is unscaled (the hooks see scaled gradients during backward), and a step the scaler
skips is recorded with ``optimizer_stepped`` 0. ``on_nonfinite="skip"`` withholds that step's
gradients from the optimizer; ``"raise"`` stops ``trainer.fit`` with ``gs.NonFiniteError``.
Works with ``lightning`` (``lightning.pytorch``) or the older ``pytorch_lightning`` package.
"""

from __future__ import annotations

import weakref
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    try:
        import pytorch_lightning as pl
    except ImportError as exc:
        raise ImportError('gradsight.integrations.lightning needs PyTorch Lightning: '
                          'pip install "gradsight[lightning]"') from exc

from ..watcher import Watcher, watch
from ._losses import StepLoss


class GradsightCallback(pl.Callback):
    """Watch the LightningModule being fit; ``watch_kwargs`` go to :func:`gradsight.watch`
    (``include=``, ``on_nonfinite=``, ``thresholds=``, ``name=``, ...). Do not pass
    ``optimizer=``: the callback closes each step at Lightning's optimizer step itself."""

    def __init__(self, **watch_kwargs: Any):
        if "optimizer" in watch_kwargs:
            raise TypeError("GradsightCallback: do not pass optimizer=; the callback finds Lightning's "
                            "optimizer and closes each step at its optimizer step.")
        if "scaler" in watch_kwargs:
            raise TypeError("GradsightCallback: do not pass scaler=; the callback takes the GradScaler of "
                            "Lightning's precision plugin (precision=\"16-mixed\") itself.")
        self.watch_kwargs = watch_kwargs
        self.watcher: Watcher | None = None
        self._loss = StepLoss()
        self._stepped = False
        self._updated = True

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and (self.watcher is None or self.watcher.closed):
            self.watcher = watch(pl_module, scaler=_scaler_of(trainer), **self.watch_kwargs)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and self.watcher is not None:
            self.watcher.close()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        w = self.watcher
        if w is None or w.closed:
            return
        w._optimizer_ref = weakref.ref(optimizer)  # learning rates; no hooks (Lightning steps inside a closure)
        if w._scaler is not None:  # the scale of this step's backward (the update comes after the step);
            w._scale_this_step = _scale(w._scaler)  # read here: training_step may bypass the root forward
        w._capture.optimizer_pre_step()
        self._updated = w.before_optimizer_step()  # on_nonfinite: may withhold gradients or raise
        self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        w = self.watcher
        if w is None or w.closed:
            return
        # Lightning hands over the loss divided by accumulate_grad_batches: undo it
        self._loss.add(outputs, scale=getattr(trainer, "accumulate_grad_batches", 1) or 1)
        if not self._stepped:  # accumulating: the step closes with the optimizer step
            return
        self._stepped = False
        w.after_optimizer_step()
        w._close_step(loss=self._loss.take(), optimizer_stepped=self._updated and not _scaler_skipped(w))


def _scaler_of(trainer) -> Any:
    """The GradScaler of Lightning's precision plugin ("16-mixed"), or None (bf16, 32-bit)."""
    plugin = getattr(trainer, "precision_plugin", None) or getattr(getattr(trainer, "strategy", None),
                                                                   "precision_plugin", None)
    scaler = getattr(plugin, "scaler", None)
    return scaler if hasattr(scaler, "get_scale") else None


def _scale(scaler: Any) -> float:
    try:
        return float(scaler.get_scale())
    except Exception:
        return float("nan")


def _scaler_skipped(w: Watcher) -> bool:
    """After ``scaler.update()``: a loss scale below the one this step's backward used means the
    scaler found Inf/NaN gradients and skipped ``optimizer.step()``."""
    return w._scaler is not None and _scale(w._scaler) < w._scale_this_step  # False for an unread (NaN) scale
