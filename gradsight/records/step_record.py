"""What one training step left behind, as plain numpy: the unit detectors and views read.

Records never point at the live model or at device tensors, so detectors and views
can be tested on records built by hand and a run can be saved and re-rendered later.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .histogram import Histogram


@dataclass
class StepRecord:
    """One closed step. Arrays are indexed by layer (model order) or parameter.

    ``act``/``grad`` hold the raw summary fields (``records.fields.FIELDS``) per
    layer, NaN rows where the layer was not seen this step; :mod:`.metrics` derives
    mean, std, norm, ... from them.
    """

    step: int
    layers: tuple[str, ...]
    act: np.ndarray                 # [L, FIELDS]
    act_numel: np.ndarray           # [L]
    grad: np.ndarray                # [L, FIELDS]
    grad_numel: np.ndarray          # [L]
    input_finite: np.ndarray        # [L] 1.0 finite, 0.0 non-finite, NaN unknown/not called
    saturation: np.ndarray          # [L] fraction of outputs within 1% of the limits; NaN if n/a
    param_names: tuple[str, ...]
    param_layer: np.ndarray         # [P] index of the owning layer
    param_sumsq: np.ndarray         # [P] ||w||^2 after the step's update
    param_grad_sumsq: np.ndarray    # [P] ||g||^2, accumulated and before any clipping
    param_update_sumsq: np.ndarray  # [P] ||w_after - w_before||^2 on sampled steps
    param_step_grad_sumsq: np.ndarray  # [P] ||g||^2 seen by optimizer.step() (after clipping);
                                       # only with gs.watch(..., optimizer=)
    param_seen: np.ndarray          # [P, 4] bool: which of (sumsq, grad, update, step_grad) were
                                    # measured; unmeasured values are NaN, measured non-finite too
    units: dict[int, np.ndarray] = field(default_factory=dict)   # layer -> per-unit max output
    hist: dict[tuple[int, str], Histogram] = field(default_factory=dict)
    forward_order: list[int] = field(default_factory=list)   # layers by first forward-hook firing
    backward_order: list[int] = field(default_factory=list)  # layers by first gradient arrival
    dtypes: dict[int, str] = field(default_factory=dict)      # layer -> activation dtype
    grad_dtypes: dict[int, str] = field(default_factory=dict)
    loss: float = float("nan")
    loss_given: bool = False  # the user passed a loss (a NaN loss is then a NaN loss, not a missing one)
    lrs: tuple[float, ...] = ()
    forward_s: float = float("nan")
    backward_s: float = float("nan")
    data_s: float = float("nan")        # previous step's close -> this step's first forward (data loading)
    optimizer_s: float = float("nan")   # optimizer.step() (with optimizer=), else end of backward -> w.step()
    saved_bytes: np.ndarray | None = None  # [L] bytes each module's forward saved for backward (detail steps)
    # [P] 1.0 finite / 0.0 non-finite when this step's forward ran, NaN not checked (checked on CPU for
    # the parameters of layers whose output was non-finite: a weight set to Inf by hand is not this step's doing)
    param_finite_at_forward: np.ndarray | None = None
    optimizer_stepped: bool | None = None   # None: no optimizer given, so unknown
    backward_passes: int = 0
    forward_passes: int = 0
    detail: bool = False      # full statistics, histograms and weight norms were taken this step
    grad_scale: float = 1.0   # GradScaler scale during this step's backward (gs.watch(..., scaler=))
    nan_events: list = field(default_factory=list)  # op-level NaN/Inf events (nan_trace="op")
    # layer -> the watched layers whose outputs it took as inputs this step (the module graph;
    # the detectors use it to find which module's backward turned a gradient non-finite)
    input_sources: dict[int, tuple[int, ...]] = field(default_factory=dict)
    # since the last record, was .grad zeroed between an optimizer update and the next backward?
    # None: not checked; "": yes; else the parameter whose old gradient that backward added to
    stale_grad: str | None = None

    @property
    def n_layers(self) -> int:
        return len(self.layers)
