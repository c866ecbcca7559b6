"""The Watcher: what ``gs.watch(model)`` returns.

It owns the hooks (:mod:`.kernel_hooks.capture`), turns each closed step into a
:class:`~.records.step_record.StepRecord`, keeps bounded history, feeds the detectors,
and answers queries as pandas tables. It keeps only a weak reference to the model, so
a watcher never keeps a model alive.
"""

from __future__ import annotations

import time
import warnings
import weakref
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .detectors import DetectorEngine
from .kernel_hooks import registry
from .kernel_hooks.capture import Capture
from .kernel_hooks.histogram import Histogram
from .records.history import DecimatingStore
from .records.metrics import DETAIL_METRICS, LAYER_METRICS, layer_metrics, total_grad_norm
from .records.step_record import StepRecord
from .records.unit_history import UnitRing
from .warnings import GradsightWarning

HISTORY_BYTES = 32 * 2**20     # cap for per-layer metric history
HISTOGRAM_BYTES = 32 * 2**20   # cap for stored histograms
SCALAR_CAPACITY = 8192         # loss / lr / timings rows before thinning
HIST_KINDS = ("activation", "grad", "weight")
_EXTRA = ("zero", "nan", "posinf", "neginf", "subnormal")
STEP_COLUMNS = ("loss", "lr", "forward_s", "backward_s", "total_grad_norm")


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"gradsight.watch: {name} must be a positive integer (1 = every step); got {value!r}.")
    return value


class Watcher:
    """Watches one model's training. Create it with :func:`gradsight.watch`."""

    def __init__(self, model: nn.Module, *, optimizer: torch.optim.Optimizer | None = None, every: int = 1,
                 histogram_every: int = 10, bins: int = 64, activations: bool = True,
                 thresholds: Any = None, name: str | None = None, scaler: Any = None,
                 nan_trace: str = "module"):
        if isinstance(model, torch.optim.Optimizer):
            raise TypeError("gradsight.watch: got an optimizer as the model. Call gs.watch(model, optimizer=opt).")
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"gradsight.watch expects a torch.nn.Module (the model you train); got {type(model).__name__}. "
                "Wrap plain functions in an nn.Module, or use gs.gradcheck(fn, *inputs) to check a function."
            )
        self.every = _check_positive_int("every", every)
        self.histogram_every = _check_positive_int("histogram_every", histogram_every)
        self.bins = _check_positive_int("bins", bins)
        if self.bins < 2 or self.bins % 2:
            raise ValueError(f"gradsight.watch: bins must be an even number >= 2 (half for negative values); got {bins}.")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"gradsight.watch: optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}.")

        if nan_trace not in ("module", "op"):
            raise ValueError(f"gradsight.watch: nan_trace must be 'module' (cheap, always on) or 'op' (exact op and "
                             f"source line of the first NaN/Inf, slower); got {nan_trace!r}.")
        if scaler is not None and not hasattr(scaler, "get_scale"):
            raise TypeError(f"gradsight.watch: scaler must be a torch.amp.GradScaler; got {type(scaler).__name__}.")

        previous = registry.watcher_of(model)
        if previous is not None:  # a re-run cell: replace, never stack hooks
            previous.close()

        self._model_ref = weakref.ref(model)
        self._compiled = _compiled_inner(model)
        self._errors_reported: set[str] = set()
        self.errors: list[tuple[str, str]] = []
        self._capture = Capture(self._compiled or model, activations=activations, bins=self.bins,
                                on_error=self._hook_error)
        self._capture.on_root_forward = self._on_root_forward
        self._scaler = scaler
        self._scale_this_step = float("nan") if scaler is not None else 1.0
        self._nan_tracer = None
        if nan_trace == "op":
            from .kernel_hooks.nan_trace import NanTracer

            self._nan_tracer = NanTracer(self._compiled or model, list(self._capture.names))
        self.name = registry.unique_name(name or type(model).__name__)
        self.closed = False
        self.step_count = 0
        self._optimizer_ref = weakref.ref(optimizer) if optimizer is not None else None
        self._opt_handles: list = []
        self._auto_closed_pending_loss = False
        self._opt_stepped_this_step = False
        self._last_record: StepRecord | None = None
        self._step_metrics: dict[str, np.ndarray] | None = None
        self._latest_metrics: dict[str, np.ndarray] | None = None
        self._latest_step: int | None = None
        self._warned_empty = False
        self._step_started = time.perf_counter()

        L = len(self._capture.names)
        cap = HISTORY_BYTES // max(1, 4 * L * len(LAYER_METRICS))
        self._layer_hist = DecimatingStore(min(4096, max(64, cap)), (len(LAYER_METRICS), L))
        self._scalars = DecimatingStore(SCALAR_CAPACITY, (len(STEP_COLUMNS),), dtype=np.float64)
        per_hist = L * len(HIST_KINDS) * (2 * self.bins + 1 + len(_EXTRA)) * 8
        self._hist_edges = DecimatingStore(max(8, min(1024, HISTOGRAM_BYTES // max(per_hist, 1))),
                                           (L, len(HIST_KINDS), self.bins + 1), dtype=np.float64)
        self._hist_counts = DecimatingStore(self._hist_edges.capacity, (L, len(HIST_KINDS), self.bins),
                                            dtype=np.int64, fill=-1)
        self._hist_extra = DecimatingStore(self._hist_edges.capacity, (L, len(HIST_KINDS), len(_EXTRA)),
                                           dtype=np.int64, fill=-1)
        self._units: dict[int, UnitRing] = {}
        self._detectors = DetectorEngine(layers=tuple(self._capture.names), types=tuple(self._capture.types),
                                         thresholds=thresholds)
        if optimizer is not None:
            self._opt_handles.append(optimizer.register_step_pre_hook(self._optimizer_pre_step))
            self._opt_handles.append(optimizer.register_step_post_hook(self._optimizer_post_step))
        if self._compiled is not None:
            warnings.warn(
                f"gradsight: {type(model).__name__} is torch.compile'd. Hooks inside compiled graphs cannot see "
                "per-layer activations and output gradients; parameter norms, gradient norms and updates are "
                "captured. To see every layer, watch the model before compiling it, or debug uncompiled.",
                GradsightWarning, stacklevel=3)
        self._begin_step()
        registry.add(self)

    # --- life cycle --------------------------------------------------------------------
    @property
    def model(self) -> nn.Module | None:
        """The watched model, or None if it was garbage-collected."""
        return self._model_ref()

    def close(self) -> None:
        """Remove every hook (modules, parameters, live tensors, optimizer). Idempotent."""
        if self.closed:
            return
        self._capture.remove()
        if self._nan_tracer is not None:
            self._nan_tracer.remove()
        for h in self._opt_handles:
            h.remove()
        self._opt_handles.clear()
        self.closed = True
        registry.discard(self)
        registry.publish("close", self)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            if not self.closed:
                self._capture.remove()
        except Exception:
            pass

    def __deepcopy__(self, memo):
        raise TypeError("A gradsight Watcher cannot be deep-copied; watch the copied model instead.")

    # --- step boundaries --------------------------------------------------------------
    def _begin_step(self) -> None:
        c = self._capture
        c.capturing = self.step_count % self.every == 0
        sampled = self.step_count % (self.every * self.histogram_every) == 0
        c.detail = c.capturing and sampled
        c.measure_update = c.capturing and sampled
        self._opt_stepped_this_step = False
        self._step_started = time.perf_counter()
        if self._scaler is not None:
            self._scale_this_step = float("nan")

    def _on_root_forward(self) -> None:
        """With ``optimizer=``, a forward after a backward whose optimizer step never ran
        (a GradScaler skip, then ``zero_grad``) closes that step as skipped. With
        ``scaler=``, a loss scale that dropped since the step began means GradScaler skipped
        it (even when ``zero_grad`` comes after the forward); and the first forward of a step
        reads the scale its backward will use."""
        if self._capture.backward_passes and self._optimizer_ref is not None:
            first = next((p for p in self._param_list() if p.requires_grad), None)
            skipped = first is not None and first.grad is None
            if not skipped and self._scaler is not None and np.isfinite(self._scale_this_step):
                skipped = _scaler_scale(self._scaler) < self._scale_this_step
            if skipped:
                self._close_step(loss=None, optimizer_stepped=False)
        if self._scaler is not None and not np.isfinite(self._scale_this_step) and self._capture.capturing:
            self._scale_this_step = _scaler_scale(self._scaler)

    def _optimizer_pre_step(self, optimizer, args, kwargs) -> None:
        if not self.closed:
            self._capture.optimizer_pre_step()

    def _optimizer_post_step(self, optimizer, args, kwargs) -> None:
        if not self.closed:
            self._close_step(loss=None, optimizer_stepped=True)
            self._auto_closed_pending_loss = True

    def step(self, loss: Any = None) -> None:
        """Close one training step (called for you after ``optimizer.step()`` with ``optimizer=``).

        ``loss`` may be a tensor or a number; it is read once, here, at the step boundary.
        With ``optimizer=`` the step is already closed, and ``step(loss=...)`` only records
        the loss of that step.
        """
        if self.closed:
            raise RuntimeError(f"gradsight: watcher {self.name!r} is closed; call gs.watch(model) again.")
        if self._auto_closed_pending_loss and not self._capture.touched:
            self._auto_closed_pending_loss = False
            rec = self._last_record
            if loss is not None and rec is not None:
                rec.loss, rec.loss_given = _to_float(loss), True
                row = self._scalars.row_of(rec.step)
                if row is not None:
                    self._scalars.data[row, STEP_COLUMNS.index("loss")] = rec.loss
                self._detect(lambda: self._detectors.loss_arrived(rec))
            return
        self._close_step(loss=loss, optimizer_stepped=None)

    def _close_step(self, loss: Any, optimizer_stepped: bool | None) -> None:
        step = self.step_count
        capturing = self._capture.capturing
        rec = self._capture.harvest(step) if capturing else None
        if rec is not None:
            rec.loss = _to_float(loss) if loss is not None else float("nan")
            rec.loss_given = loss is not None
            rec.grad_scale = self._scale_this_step
            if self._nan_tracer is not None:
                rec.nan_events = self._nan_tracer.harvest()
            opt = self._optimizer_ref() if self._optimizer_ref is not None else None
            if opt is not None:
                rec.lrs = tuple(float(g.get("lr", float("nan"))) for g in opt.param_groups)
                rec.optimizer_stepped = optimizer_stepped
            self._store(rec)
            self._check_empty(rec)
            self._detect(lambda: self._detectors.update(rec, metrics=self._step_metrics))
        self._auto_closed_pending_loss = False
        self.step_count += 1
        self._begin_step()
        registry.publish("step", self)

    def _detect(self, run) -> None:
        try:
            new = run()
        except Exception as exc:  # detectors are ours: report, never break training
            self._hook_error("<detectors>", exc)
            new = []
        for finding in new:
            _warn_finding(self.name, finding)

    def _store(self, rec: StepRecord) -> None:
        self._last_record = rec
        metrics = self._step_metrics = layer_metrics(rec)
        self._latest_metrics = _merge_latest(self._latest_metrics, metrics, rec.detail)
        self._latest_step = rec.step
        self._layer_hist.append(rec.step, np.stack([metrics[m] for m in LAYER_METRICS]))
        for i, per_unit in rec.units.items():
            ring = self._units.get(i)
            if ring is None or ring.values.shape[1] != per_unit.size:
                ring = self._units[i] = UnitRing(per_unit.size)
            ring.add(rec.step, per_unit)
        lr = rec.lrs[0] if rec.lrs else float("nan")
        self._scalars.append(rec.step, [rec.loss, lr, rec.forward_s, rec.backward_s, total_grad_norm(rec)])
        if rec.hist:
            L = rec.n_layers
            edges = np.full((L, len(HIST_KINDS), self.bins + 1), np.nan)
            counts = np.full((L, len(HIST_KINDS), self.bins), -1, dtype=np.int64)
            extra = np.full((L, len(HIST_KINDS), len(_EXTRA)), -1, dtype=np.int64)
            for (i, of), h in rec.hist.items():
                k = HIST_KINDS.index(of)
                edges[i, k] = h.edges
                counts[i, k] = h.counts
                extra[i, k] = [h.zero, h.nan, h.posinf, h.neginf, h.subnormal]
            self._hist_edges.append(rec.step, edges)
            self._hist_counts.append(rec.step, counts)
            self._hist_extra.append(rec.step, extra)

    def _check_empty(self, rec: StepRecord) -> None:
        """Never silently empty tables: say once why nothing per-layer was seen."""
        if self._warned_empty or rec.forward_order or not rec.param_seen[:, 1].any():
            return
        self._warned_empty = True
        model = self.model
        why = ("the forward ran under torch.no_grad(), in eval() mode, or through torch.compile"
               if model is not None else "the model was garbage-collected")
        warnings.warn(f"gradsight: step {rec.step} of {self.name!r} had gradients but no layer was seen in "
                      f"forward ({why}); only parameter statistics are recorded.", GradsightWarning, stacklevel=4)

    # --- errors -------------------------------------------------------------------------
    def _hook_error(self, where: str, exc: BaseException) -> None:
        self.errors.append((where, f"{type(exc).__name__}: {exc}"))
        del self.errors[:-100]
        if where in self._errors_reported:
            return
        self._errors_reported.add(where)
        warnings.warn(f"gradsight: internal error while capturing layer {where!r} "
                      f"(reported once; training continues): {type(exc).__name__}: {exc}",
                      GradsightWarning, stacklevel=2)

    # --- queries ------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return list(self._capture.names)

    def _layer_index(self, layer: str, where: str) -> int:
        if not isinstance(layer, str):
            raise TypeError(f"gradsight: {where} takes a layer name (str) as in model.named_modules(); "
                            f"got {type(layer).__name__}.")
        idx = self._capture.index.get(layer)
        if idx is None:
            import difflib

            close = difflib.get_close_matches(layer, self._capture.names, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"gradsight: {where}: no layer named {layer!r} in {self.name}.{hint} "
                             f"Known layers: w.layer_names ({len(self._capture.names)} names).")
        return idx

    def layers(self) -> pd.DataFrame:
        """One row per watched module, in model order, with the latest step's statistics."""
        c = self._capture
        L = len(c.names)
        n_params = np.zeros(L, dtype=np.int64)
        for j, ref in enumerate(c._params):
            p = ref()
            if p is not None:
                n_params[c.param_layer[j]] += p.numel()
        rec = self._last_record
        metrics = self._latest_metrics or {}
        columns = {"layer": c.names, "type": c.types, "params": n_params,
                   "dtype": [rec.dtypes.get(i, "") if rec else "" for i in range(L)]}
        columns.update({m: metrics.get(m, np.full(L, np.nan)) for m in LAYER_METRICS})
        columns["step"] = np.full(L, self._latest_step if self._latest_step is not None else -1)
        return pd.DataFrame(columns)  # built in one go: the panel reads it on every push

    def history(self, metric: str = "grad_norm") -> pd.DataFrame:
        """One row per recorded step, one column per layer (or one column for step metrics)."""
        if metric in STEP_COLUMNS:
            steps, data = self._scalars.valid()
            return pd.DataFrame({metric: data[:, STEP_COLUMNS.index(metric)]},
                                index=pd.Index(steps, name="step"))
        if metric not in LAYER_METRICS:
            raise ValueError(f"gradsight: history({metric!r}): unknown metric. Layer metrics: "
                             f"{', '.join(LAYER_METRICS)}; step metrics: {', '.join(STEP_COLUMNS)}.")
        steps, data = self._layer_hist.valid()
        k = LAYER_METRICS.index(metric)
        return pd.DataFrame(data[:, k, :].astype(np.float64), index=pd.Index(steps, name="step"),
                            columns=self._capture.names)

    def steps(self) -> pd.DataFrame:
        """Per-step scalars: loss, learning rate (first group), wall times, total gradient norm."""
        steps, data = self._scalars.valid()
        df = pd.DataFrame(data, columns=list(STEP_COLUMNS))
        df.insert(0, "step", steps)
        return df

    def histogram_steps(self, layer: str, of: str = "grad") -> list[int]:
        i = self._layer_index(layer, "histogram_steps")
        k = _of_index(of)
        steps, counts = self._hist_counts.valid()
        return [int(s) for s, c in zip(steps, counts, strict=True) if c[i, k, 0] >= 0]

    def histogram(self, layer: str, of: str = "grad", step: int | None = None) -> Histogram:
        """The histogram of ``layer``'s gradient, activation or weight (latest, or at ``step``)."""
        i = self._layer_index(layer, "histogram")
        k = _of_index(of)
        available = self.histogram_steps(layer, of)
        if not available:
            raise ValueError(
                f"gradsight: no {of} histogram of {layer!r} yet. Histograms are taken every "
                f"{self.histogram_every} step(s) (histogram_every=); run a training step first"
                + (" (weights only exist for layers with their own parameters)." if of == "weight" else "."))
        if step is None:
            step = available[-1]
        if step not in available:
            raise ValueError(f"gradsight: no {of} histogram of {layer!r} at step {step}; "
                             f"available: {available[:5]}{' ...' if len(available) > 5 else ''} up to {available[-1]}.")
        r = self._hist_counts.row_of(step)
        extra = self._hist_extra.data[r, i, k]
        return Histogram(layer=layer, of=of, step=int(step), edges=self._hist_edges.data[r, i, k].copy(),
                         counts=self._hist_counts.data[r, i, k].copy(), zero=int(extra[0]), nan=int(extra[1]),
                         posinf=int(extra[2]), neginf=int(extra[3]), subnormal=int(extra[4]))

    def unit_history(self, layer: str) -> pd.DataFrame:
        """Per-unit max output of a ReLU-family layer over the last steps (rows: steps, columns:
        units). A unit whose column never exceeds 0 produced no positive value in the window."""
        i = self._layer_index(layer, "unit_history")
        ring = self._units.get(i)
        if ring is None:
            kind = self._capture.types[i]
            raise ValueError(f"gradsight: unit_history({layer!r}): no unit activity recorded for this {kind}. "
                             "It is kept for ReLU-family modules (ReLU, LeakyReLU, GELU, SiLU, ...) after a "
                             "training step.")
        steps, values = ring.ordered()
        return pd.DataFrame(values, index=pd.Index(steps, name="step"))

    def findings(self, all: bool = False) -> pd.DataFrame:  # noqa: A002 - reads as w.findings(all=True)
        """What the detectors found: one row per episode (issue 3's contract), ordered by first
        step, then severity, then layer. ``status`` is ``suspected`` while the evidence is
        still building and ``confirmed`` once it is complete; ``all=True`` also lists the
        suspicions that were dismissed because they stopped holding."""
        return self._detectors.frame(all=all)

    def last_record(self) -> StepRecord | None:
        return self._last_record

    def memory_bytes(self) -> int:
        """Host memory held by the bounded history (the documented cap is ~64 MiB)."""
        stores = (self._layer_hist, self._scalars, self._hist_edges, self._hist_counts, self._hist_extra)
        return sum(s.nbytes for s in stores)

    def gradcheck(self, layer: str, mode: str = "full", **kwargs):
        """Finite-difference check of ``layer`` on the inputs it saw in the last training step."""
        i = self._layer_index(layer, "gradcheck")
        model = self.model
        if model is None:
            raise RuntimeError("gradsight: the watched model no longer exists.")
        entry = self._capture.last_inputs.get(i)
        if entry is None or entry[0] < 0:
            raise ValueError(f"gradsight: gradcheck({layer!r}): no inputs recorded for this layer yet. Inputs "
                             f"are kept on histogram steps (every {self.histogram_every * self.every} steps, step 0 "
                             "included) for layers with parameters or of your own classes: run a training step "
                             "with the model in train() mode first.")
        from .gradcheck import check_module_call

        module = dict(model.named_modules())[layer] if self._compiled is None else \
            dict(self._compiled.named_modules())[layer]
        self._capture.paused = True  # the check calls the module many times: not training steps
        try:
            report = check_module_call(module, entry[1], entry[2], mode=mode, **kwargs)
        finally:
            self._capture.paused = False
        try:
            report.layer = layer
            report.step = entry[0]
        except Exception:
            pass
        return report

    def _param_list(self) -> list[nn.Parameter]:
        return [p for ref in self._capture._params if (p := ref()) is not None]

    # --- display ------------------------------------------------------------------------
    def dashboard(self):
        """A live ipywidgets dashboard (imported on first use)."""
        from .widgets.dashboard import Dashboard

        return Dashboard(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.step_count} steps"
        return f"<gradsight.Watcher {self.name!r}: {len(self._capture.names)} layers, {state}>"

    def _repr_html_(self) -> str:
        from .widgets.summary_html import watcher_html  # plain HTML, no matplotlib

        return watcher_html(self)


def _merge_latest(old: dict | None, new: dict, detail: bool) -> dict:
    """Latest value of every metric for layers(): on light steps the detail metrics keep their
    last measured value — unless the layer went non-finite, when the new values are the news."""
    if old is None or detail:
        return new
    merged = dict(new)
    for prefix in ("act", "grad"):
        with np.errstate(invalid="ignore"):
            news = (new[f"{prefix}_nan"] > 0) | (new[f"{prefix}_posinf"] > 0) | (new[f"{prefix}_neginf"] > 0)
        for m in DETAIL_METRICS:
            if m.startswith(prefix):
                merged[m] = np.where(news, new[m], old[m])
    for m in ("param_norm", "update_norm", "update_ratio", "saturation"):
        merged[m] = old[m]
    return merged


def _of_index(of: str) -> int:
    if of not in HIST_KINDS:
        raise ValueError(f"gradsight: of={of!r}; expected one of {', '.join(map(repr, HIST_KINDS))}.")
    return HIST_KINDS.index(of)


def _to_float(loss: Any) -> float:
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(f"gradsight: step(loss=...) expects a scalar; got a tensor of shape {tuple(loss.shape)}.")
        return float(loss.detach())  # the one host read of the step, at its boundary
    try:
        return float(loss)
    except (TypeError, ValueError):
        raise TypeError(f"gradsight: step(loss=...) expects a number or a scalar tensor; got {type(loss).__name__}.") \
            from None


def _scaler_scale(scaler: Any) -> float:
    try:
        return float(scaler.get_scale())  # once per step, at its first forward
    except Exception:
        return float("nan")


def _compiled_inner(model: nn.Module) -> nn.Module | None:
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else None


def _user_stacklevel() -> int:
    """Point a warning at the user's line, not at torch's or gradsight's internals (with
    ``optimizer=`` the step closes inside torch's optimizer hook)."""
    import os
    import sys

    skip = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level


def _warn_finding(name: str, finding: Any) -> None:
    msg = getattr(finding, "message", str(finding))
    layer = getattr(finding, "layer", "")
    kind = getattr(finding, "kind", "finding")
    where = f"layer {layer!r}" if layer else "the whole model"
    warnings.warn(f"gradsight [{name}] {kind} at {where}: {msg}", GradsightWarning, stacklevel=_user_stacklevel())


def watch(model: nn.Module, *, optimizer: torch.optim.Optimizer | None = None, every: int = 1,
          histogram_every: int = 10, bins: int = 64, activations: bool = True, thresholds: Any = None,
          name: str | None = None, scaler: Any = None, nan_trace: str = "module") -> Watcher:
    """Watch ``model`` while it trains; re-watching a model replaces the old watcher.

    optimizer: closes each step for you after ``optimizer.step()`` and records learning rates.
    every: capture every n-th step. histogram_every: histograms (and update norms) every n-th
    captured step. bins: histogram bins (even). activations: also summarise module outputs.
    thresholds: detector thresholds (``gs.Thresholds``). scaler: the ``GradScaler`` in use, so
    gradients are reported unscaled and skipped steps are recognised. nan_trace: "module"
    (default, cheap) or "op" (the exact op and source line of the first NaN/Inf).
    """
    return Watcher(model, optimizer=optimizer, every=every, histogram_every=histogram_every, bins=bins,
                   activations=activations, thresholds=thresholds, name=name, scaler=scaler,
                   nan_trace=nan_trace)

