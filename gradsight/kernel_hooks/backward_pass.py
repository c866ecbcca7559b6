"""Which backward passes are training backwards.

A step's output-gradient statistics come from tensor hooks on module outputs, and those run in
every backward pass through the model: ``loss.backward()``, but also an ``autograd.grad`` to the
inputs — a gradient penalty (WGAN-GP, R1), a PINN's derivatives, a saliency map — taken before
the loss's backward. Such a pass must not count as a training backward (the next forward would
close a 'skipped' step) nor merge its output gradients into the step's. A pass trains when the
engine runs the gradient accumulator of one of the model's parameters; asked once per pass
(graph task), of the parameters last in the model first (the ones every loss reaches).
"""

from __future__ import annotations

import weakref

import torch


class TrainingPass:
    def __init__(self, params: list[weakref.ref]):
        self._params = params
        self._task = -1      # the graph task last asked about
        self._trains = True  # and its answer

    def __call__(self) -> bool:
        task = torch._C._current_graph_task_id()
        if task != self._task:
            self._task = task
            self._trains = self._accumulates()
        return self._trains

    def _accumulates(self) -> bool:
        trainable = 0
        try:
            for ref in reversed(self._params):
                p = ref()
                if p is None or not p.requires_grad:
                    continue
                trainable += 1
                try:
                    if torch._C._will_engine_execute_node(torch.autograd.graph.get_gradient_edge(p).node):
                        return True
                except RuntimeError:  # a leaf that autograd.grad() captures: not accumulated
                    return False
        except Exception:  # torch < 2.2 (no get_gradient_edge): count every pass, as before
            return True
        return trainable == 0  # a model without trainable parameters: every pass is its backward
