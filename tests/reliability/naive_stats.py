"""Naive re-implementations of what gradsight reports for one step, and hook counts.

Plain torch, written for clarity: the reliability tests compare gradsight's numbers for the
current step to these after every notebook edit.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class OutputNorms:
    """The L2 norm of every module's output(s) over one step (all forwards of the step),
    measured by the test's own forward hooks."""

    def __init__(self, model: nn.Module):
        self.sumsq: dict[str, float] = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in model.named_modules()]

    def _hook(self, name: str):
        def hook(module, args, output):
            if torch.is_grad_enabled() and module.training and isinstance(output, torch.Tensor):
                self.sumsq[name] = self.sumsq.get(name, 0.0) + float(output.detach().double().pow(2).sum())
        return hook

    def reset(self) -> None:
        self.sumsq.clear()

    def norm(self, name: str) -> float:
        return math.sqrt(self.sumsq[name])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def param_norms(model: nn.Module) -> dict[str, float]:
    """Each module's own parameters' L2 norm (the layers() column param_norm)."""
    out = {}
    for name, m in model.named_modules():
        ps = list(m.parameters(recurse=False))
        if ps:
            out[name] = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in ps))
    return out


def total_grad_norm(model: nn.Module) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))


def hook_count(model: nn.Module) -> int:
    """Module hooks plus parameter post-accumulate-grad hooks on the model."""
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks)
        n += len(m._backward_hooks) + len(m._backward_pre_hooks)
    for p in model.parameters():
        n += len(p._post_accumulate_grad_hooks or {})
    return n


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)
