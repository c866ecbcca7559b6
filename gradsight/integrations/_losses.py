"""The loss of one optimizer step from its micro-batches' losses, read once at the step's end."""

from __future__ import annotations

from typing import Any

import torch


class StepLoss:
    """Collects the (detached) loss of each micro-batch; :meth:`take` returns their mean as a
    float — one host read per optimizer step — or None when no loss was seen."""

    def __init__(self) -> None:
        self._parts: list[torch.Tensor] = []

    def add(self, loss: Any, scale: float = 1) -> None:
        if isinstance(loss, dict):
            loss = loss.get("loss")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._parts.append(loss.detach().reshape(()).float() * scale)
        elif isinstance(loss, (int, float)):
            self._parts.append(torch.tensor(float(loss) * scale))

    def take(self) -> float | None:
        parts, self._parts = self._parts, []
        if not parts:
            return None
        return float(torch.stack([p.cpu() for p in parts]).mean())
