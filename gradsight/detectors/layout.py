"""The static shape of the watched model, as the detectors need it: module nesting from
the qualified names, parameter owners, and the per-layer quantities that records carry
only on some steps (weight norms, measured on detail steps, are carried forward).

Built once; nothing here grows with the number of steps.
"""

from __future__ import annotations

import numpy as np

from ..records.fields import F
from ..records.step_record import StepRecord


class Layout:
    """Module tree of ``layers`` (qualified names in ``named_modules()`` order)."""

    def __init__(self, layers: tuple[str, ...], types: tuple[str, ...]):
        self.layers = tuple(layers)
        self.types = tuple(types) if types else ("",) * len(self.layers)
        self.index = {name: i for i, name in enumerate(self.layers)}
        self.parent = np.full(len(self.layers), -1, dtype=np.int64)
        for i, name in enumerate(self.layers):
            if not name:
                continue
            head = name.rpartition(".")[0]
            while head not in self.index and head:
                head = head.rpartition(".")[0]
            self.parent[i] = self.index.get(head, -1)
        self.param_layer: np.ndarray | None = None
        self.param_names: tuple[str, ...] = ()
        has_child = np.zeros(len(self.layers), dtype=bool)
        has_child[self.parent[self.parent >= 0]] = True
        plain = np.array([_is_pass_through_type(t) for t in self.types], dtype=bool)
        # layers that only pass values on: containers and parameter-free elementwise modules
        # (refined to parameter-free ones when parameters are bound)
        self.pass_through = has_child | plain

    def bind_params(self, rec: StepRecord) -> None:
        """Parameter ownership arrives with the first record."""
        if self.param_layer is None or len(self.param_layer) != len(rec.param_layer):
            self.param_layer = np.asarray(rec.param_layer, dtype=np.int64)
            self.param_names = tuple(rec.param_names)
            own = np.zeros(len(self.layers), dtype=bool)
            own[self.param_layer] = True
            self.pass_through = self.pass_through & ~own  # a PReLU or a container's own weights compute

    def ancestors(self, i: int) -> list[int]:
        out = []
        p = int(self.parent[i])
        while p >= 0:
            out.append(p)
            p = int(self.parent[p])
        return out

    def in_subtree(self, layer: int, root: int) -> bool:
        return layer == root or root in self.ancestors(layer)

    def describe(self, i: int) -> str:
        """``'fc1' (Linear)`` — how messages name a layer."""
        name = self.layers[i] if i >= 0 else ""
        kind = self.types[i] if 0 <= i < len(self.types) else ""
        label = repr(name) if name else "the model (root)"
        return f"{label} ({kind})" if kind else label

    def name(self, i: int) -> str:
        return self.layers[i] if i >= 0 else ""


# Parameter-free modules that only move, reshape, drop or squash values elementwise: never the
# named layer of a gradient-scale or underflow finding, never a NaN/Inf origin from finite inputs.
_PASS_THROUGH = {"Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                 "FeatureAlphaDropout", "Flatten", "Unflatten", "ReLU", "ReLU6", "LeakyReLU", "RReLU", "ELU",
                 "CELU", "SELU", "GELU", "SiLU", "Mish", "Hardswish", "Hardtanh", "Sigmoid", "Tanh",
                 "Softsign", "Hardsigmoid", "Tanhshrink", "Softplus", "NewGELUActivation", "GELUActivation",
                 "FastGELUActivation", "QuickGELUActivation"}
_NONFINITE_SAFE = {"Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                   "FeatureAlphaDropout", "Flatten", "Unflatten", "ReLU", "ReLU6", "LeakyReLU", "RReLU",
                   "Hardtanh", "Sigmoid", "Tanh", "Softsign", "Hardsigmoid"}


def _is_pass_through_type(kind: str) -> bool:
    return kind in _PASS_THROUGH


def cannot_create_nonfinite(kind: str) -> bool:
    """Modules that map finite inputs to finite outputs whatever the values (no exp, no
    division): a NaN/Inf at their output came in with their input."""
    return kind in _NONFINITE_SAFE


def nonfinite_counts(raw: np.ndarray) -> np.ndarray:
    """NaN + Inf count per row of raw summary fields; 0 for rows not measured."""
    c = raw[:, F["nan"]] + raw[:, F["posinf"]] + raw[:, F["neginf"]]
    return np.where(np.isnan(c), 0.0, c)


def per_layer_sum(values: np.ndarray, measured: np.ndarray, owner: np.ndarray, n_layers: int) -> np.ndarray:
    """Sum the measured parameter values into their owning layers (a non-finite value makes
    its layer's sum non-finite); NaN for layers with nothing measured."""
    out = np.zeros(n_layers)
    np.add.at(out, owner[measured], values[measured])
    has = np.zeros(n_layers, dtype=bool)
    has[owner[measured]] = True
    out[~has] = np.nan
    return out


def fmt(x: float) -> str:
    """Numbers in messages: 3 significant digits, scientific when large or small."""
    if x is None or not np.isfinite(x):
        return str(x)
    a = abs(x)
    if a != 0 and (a >= 1e4 or a < 1e-3):
        return f"{x:.2e}"
    return f"{x:.3g}"
