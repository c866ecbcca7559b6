"""The Watcher: what ``gs.watch(model)`` returns.

It owns the hooks (:mod:`.kernel_hooks.capture`), turns each closed step into a
:class:`~.records.step_record.StepRecord`, keeps bounded history, feeds the detectors,
and answers queries as pandas tables. It keeps only a weak reference to the model, so
a watcher never keeps a model alive.
"""

from __future__ import annotations

import contextlib
import time
import warnings
import weakref
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import bus
from .detectors import DetectorEngine
from .detectors.finding import SEVERITY_RANK
from .distributed import CrossRank, detect
from .distributed.context import warn_opaque
from .distributed.cross_rank import QUERY_WAIT_S
from .distributed.handshake import agree
from .distributed.layout import Layout
from .kernel_hooks.capture import Capture
from .kernel_hooks.filters import scripted, select_modules
from .nonfinite import check_mode, copy_inputs, error_for, first_nonfinite, grads_finite
from .records.histogram import HIST_KINDS
from .records.queries import RunQueries
from .records.run_history import RunHistory
from .records.step_record import StepRecord
from .step_lifecycle import check_forward_start, register_global, say_once, step_is_empty
from .warnings import GradsightWarning, user_stacklevel


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"gradsight.watch: {name} must be a positive integer (1 = every step); got {value!r}.")
    return value


class Watcher(RunQueries):
    """Watches one model's training. Create it with :func:`gradsight.watch`.

    The read API (``layers()``, ``history()``, ...) is :class:`~.records.queries.RunQueries`
    over this run's :class:`~.records.run_history.RunHistory`; the watcher adds the hooks,
    the optimizer hooks and the detectors."""

    def __init__(self, model: nn.Module, *, optimizer: torch.optim.Optimizer | None = None, every: int = 1,
                 histogram_every: int = 10, bins: int = 64, activations: bool = True,
                 thresholds: Any = None, name: str | None = None, scaler: Any = None,
                 nan_trace: str = "module", include: Any = None, exclude: Any = None,
                 on_nonfinite: str = "warn", tensorboard: Any = None, record: Any = None,
                 checksum_every: int = 10, distributed: bool = True):
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
        checksum_every = _check_positive_int("checksum_every", checksum_every)
        if not isinstance(distributed, bool):
            raise TypeError(f"gradsight.watch: distributed must be True or False; got {distributed!r}.")
        if self.bins < 2 or self.bins % 2:
            raise ValueError(f"gradsight.watch: bins must be an even number >= 2 (half for negative values); got {bins}.")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"gradsight.watch: optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}.")

        if nan_trace not in ("module", "op"):
            raise ValueError(f"gradsight.watch: nan_trace must be 'module' (cheap, always on) or 'op' (exact op and "
                             f"source line of the first NaN/Inf, slower); got {nan_trace!r}.")
        if scaler is not None and not hasattr(scaler, "get_scale"):
            raise TypeError(f"gradsight.watch: scaler must be a torch.amp.GradScaler; got {type(scaler).__name__}.")

        self.on_nonfinite = check_mode(on_nonfinite)
        select_modules(_compiled_inner(model) or model, include, exclude)  # bad patterns fail before anything changes
        previous = bus.watcher_of(model)
        if previous is not None:  # a re-run cell: replace, never stack hooks
            previous.close()

        self._model_ref = weakref.ref(model)
        self._compiled = _compiled_inner(model)
        self._errors_reported: set[str] = set()
        self._said: set[str] = set()  # one-time notices already given (see _say_once)
        self.errors: list[tuple[str, str]] = []
        self.activations = activations
        self._include, self._exclude = include, exclude
        self._batch: Any = None  # on_nonfinite="raise": the latest forward's inputs, detached
        self._withheld: list = []  # on_nonfinite="skip": (param, grad) kept from one optimizer.step()
        self._recorder = None
        self._capture = self._new_capture()
        try:
            self._setup(model, optimizer, thresholds, scaler, nan_trace, name, tensorboard=tensorboard,
                        checksum_every=checksum_every, distributed=distributed)
        except BaseException:  # roll back: a failed watch leaves no hook behind
            self._release_hooks()
            raise
        if record is not None:  # pyarrow loads here, on first use
            from .recording.recorder import start

            try:
                self._recorder = start(self, record, hist_kinds=HIST_KINDS)
            except BaseException:
                self.close()  # a watcher that failed to start leaves no hook behind
                raise
        if distributed:
            try:
                self._start_cross(checksum_every)
            except BaseException:  # an interrupt while waiting for the other ranks: leave no hook behind
                self.close()
                raise
        self._begin_step()
        bus.add(self)

    def _new_capture(self) -> Capture:
        root = self._compiled or self.model
        selected = select_modules(root, self._include, self._exclude)  # re-selected after a model change
        capture = Capture(root, activations=self.activations, bins=self.bins, on_error=self._hook_error,
                          on_root_forward=self._on_root_forward, modules=selected)
        if self.on_nonfinite == "raise":
            capture.on_root_inputs = self._keep_inputs
        capture.trace = getattr(self, "_nan_tracer", None)
        self._param_ids = _identities(capture.parameters())
        return capture

    def _setup(self, model, optimizer, thresholds, scaler, nan_trace, name, *, tensorboard, checksum_every,
               distributed) -> None:
        self._scaler = scaler
        self._scale_this_step = float("nan") if scaler is not None else 1.0
        self._nan_tracer = None
        if nan_trace == "op":
            from .kernel_hooks.nan_trace import NanTracer

            self._nan_tracer = NanTracer(self._compiled or model, list(self._capture.names))
            self._capture.trace = self._nan_tracer
        self.name = bus.unique_name(name or type(model).__name__)
        self.closed = False
        self.step_count = 0
        self._optimizer_ref = weakref.ref(optimizer) if optimizer is not None else None
        self._opt_handles: list = []
        self._opt_param_ids: dict[int, weakref.ref] = {}
        self._foreign: dict[int, tuple[weakref.ref, bool]] = {}  # optimizer id -> (ref, steps our parameters)
        self._opt_stepped_since_forward = False
        self._user_stepped = False  # w.step() was called: the user closes steps (no auto-close)
        self._tainted: str | None = None  # why the open step must not be recorded
        self._auto_closed_pending_loss = False
        self._opt_stepped_this_step = False
        self._last_record: StepRecord | None = None
        self._warned_empty = False
        self._history = RunHistory(self._capture.names, self._capture.types, self.bins,
                                   param_counts=self._capture.param_counts(), name=self.name,
                                   histogram_every=self.histogram_every)
        self._detectors = DetectorEngine(layers=tuple(self._capture.names), types=tuple(self._capture.types),
                                         thresholds=thresholds)
        self._tensorboard = None
        if tensorboard is not None:
            from .records.tensorboard_export import TensorBoardStream

            self._tensorboard = TensorBoardStream(self._history, tensorboard)
        self._rank_ctx = detect(model)  # local: no collective (the handshake comes after record= started)
        self._cross: CrossRank | None = None
        self._cross_capture: weakref.ref | None = None  # the capture whose layout the cross-rank part sends
        self._cross_off = "" if distributed else "gs.watch(..., distributed=False) was given"
        if optimizer is not None:
            self._hook_optimizer(optimizer)
        self._global_opt_handles = register_global(self)
        opaque = scripted(self._compiled or model)
        if opaque:
            names = ", ".join(repr(n) for n, _ in opaque[:5]) + (" ..." if len(opaque) > 5 else "")
            one = len(opaque) == 1
            warnings.warn(f"gradsight: {names} {'is a TorchScript module' if one else 'are TorchScript modules'}, "
                          f"which {'takes' if one else 'take'} no Python hooks: {'its' if one else 'their'} parameters' "
                          "norms, gradients and updates are captured, not activation or output-gradient statistics "
                          "(those are part of the parent's output). Watch the module before torch.jit.script to see "
                          "inside it.", GradsightWarning, stacklevel=4)
        if self._compiled is not None:
            warnings.warn(
                f"gradsight: {type(model).__name__} is torch.compile'd. Hooks inside compiled graphs cannot see "
                "per-layer activations and output gradients; parameter norms, gradient norms and updates are "
                "captured. To see every layer, watch the model before compiling it, or debug uncompiled.",
                GradsightWarning, stacklevel=4)

    # --- life cycle --------------------------------------------------------------------
    @property
    def model(self) -> nn.Module | None:
        """The watched model, or None if it was garbage-collected."""
        return self._model_ref()

    def close(self) -> None:
        """Remove every hook (modules, parameters, live tensors, optimizer). Idempotent."""
        if self.closed:
            return
        self._release_hooks()
        self._farewell()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._recorder is not None:
            try:
                self._recorder.close()
            except Exception as exc:
                self._hook_error("<recording>", exc)
        self.closed = True
        bus.discard(self)
        bus.publish("close", self)

    def _farewell(self) -> None:
        """Tell the other ranks' watchers that this one stops (they would wait for it forever)."""
        cross = getattr(self, "_cross", None)
        if cross is not None:
            cross.close()

    def _release_hooks(self) -> None:
        self._capture.remove()
        if getattr(self, "_nan_tracer", None) is not None:
            self._nan_tracer.remove()
        for h in getattr(self, "_opt_handles", ()):
            h.remove()
        if getattr(self, "_opt_handles", None):
            self._opt_handles.clear()
        for handle in getattr(self, "_global_opt_handles", ()):
            handle.remove()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            if not self.closed:
                self._release_hooks()
                self._farewell()
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
        c.began = False
        c.step_started = time.perf_counter()  # the data-loading time runs from here to the next forward
        if self._scaler is not None:
            self._scale_this_step = float("nan")

    def _on_root_forward(self) -> Capture:
        """A training forward of the whole model starts: the one place where the step life
        cycle is checked (see :mod:`.step_lifecycle`); returns the capture that takes it."""
        try:
            check_forward_start(self)
            self._scaler_checks()
        except Exception as exc:  # never raise from the user's forward
            self._hook_error("<step>", exc)
        return self._capture

    def _scaler_checks(self) -> None:
        """With ``optimizer=``, a forward after a backward whose optimizer step never ran
        (a GradScaler skip, then ``zero_grad``) closes that step as skipped. With
        ``scaler=``, a loss scale that dropped since the step began means GradScaler skipped
        it (even when ``zero_grad`` comes after the forward); and the first forward of a step
        reads the scale its backward will use."""
        if self._capture.backward_passes and self._optimizer_ref is not None:
            first = next((p for p in self._capture.parameters() if p.requires_grad), None)
            skipped = first is not None and first.grad is None
            if not skipped and self._scaler is not None and np.isfinite(self._scale_this_step):
                skipped = _scaler_scale(self._scaler) < self._scale_this_step
            if skipped:
                self._close_step(loss=None, optimizer_stepped=False, check=False)
        if self._scaler is not None and not np.isfinite(self._scale_this_step) and self._capture.capturing:
            self._scale_this_step = _scaler_scale(self._scaler)

    def _keep_inputs(self, args: tuple, kwargs: dict) -> None:
        self._batch = copy_inputs(args, kwargs)

    def _hook_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        for h in self._opt_handles:
            h.remove()
        self._opt_handles = [optimizer.register_step_pre_hook(self._optimizer_pre_step),
                             optimizer.register_step_post_hook(self._optimizer_post_step)]
        self._optimizer_ref = weakref.ref(optimizer)
        self._know_params(optimizer)

    def _know_params(self, optimizer: torch.optim.Optimizer) -> None:
        self._opt_param_ids = _identities(p for g in optimizer.param_groups for p in g["params"])
        self._capture.limit_updates(self._opt_param_ids)

    def _optimizer_pre_step(self, optimizer, args, kwargs) -> None:
        if not self.closed:
            try:
                if sum(len(g["params"]) for g in optimizer.param_groups) != len(self._opt_param_ids):
                    self._know_params(optimizer)  # add_param_group since: its parameters are stepped too
                self._capture.optimizer_pre_step()
            except Exception as exc:  # never raise from optimizer.step()
                self._hook_error("<optimizer>", exc)
            if self.on_nonfinite != "warn":
                self.before_optimizer_step()  # may raise gs.NonFiniteError: the user asked for it

    def before_optimizer_step(self) -> bool:
        """Apply ``on_nonfinite`` to the gradients the optimizer is about to use; returns False
        when this step must not update the weights. Called from the optimizer pre-hook, or by a
        trainer integration at its "before optimizer step" point."""
        if self.on_nonfinite == "warn":
            return True
        params = self._capture.parameters()
        ok, bad = grads_finite(params)
        if ok:
            return True
        if self.on_nonfinite == "skip":
            self._withheld = [(p, p.grad) for p in params if p.grad is not None]
            for p, _ in self._withheld:
                p.grad = None  # optimizers skip parameters without a gradient
            return False
        step = self.step_count
        self._close_step(loss=None, optimizer_stepped=False, check=False)
        rec = self._last_record
        where = first_nonfinite(rec) if rec is not None and rec.step == step else None
        if where is None:
            owner = self._capture.param_layer[self._capture_param_index(params[bad[0]])]
            where = (self._capture.names[int(owner)], "backward")
        raise error_for(self.name, step, where, self._batch)

    def _capture_param_index(self, p) -> int:
        for j, ref in enumerate(self._capture._params):
            if ref() is p:
                return j
        return 0

    def _optimizer_post_step(self, optimizer, args, kwargs) -> None:
        if not self.closed:
            stepped = not self._withheld
            self.after_optimizer_step()
            self._close_step(loss=None, optimizer_stepped=stepped)
            self._auto_closed_pending_loss = True

    def after_optimizer_step(self) -> None:
        """Give back the gradients ``on_nonfinite="skip"`` withheld from the optimizer."""
        for p, g in self._withheld:
            p.grad = g
        self._withheld = []

    def step(self, loss: Any = None) -> None:
        """Close one training step (called for you after ``optimizer.step()`` with ``optimizer=``).

        ``loss`` may be a tensor or a number; it is read once, here, at the step boundary.
        With ``optimizer=`` the step is already closed, and ``step(loss=...)`` only records
        the loss of that step.
        """
        if self.closed:
            raise RuntimeError(f"gradsight: watcher {self.name!r} is closed; call gs.watch(model) again.")
        self._user_stepped = True
        if self._auto_closed_pending_loss and not self._capture.touched:
            self._auto_closed_pending_loss = False
            rec = self._last_record
            if loss is not None and rec is not None:
                rec.loss, rec.loss_given = _to_float(loss), True
                self._history.set_loss(rec.step, rec.loss)
                if self._tensorboard is not None:
                    self._tensorboard.write_loss(rec.step, rec.loss)
                self._detect(lambda: self._detectors.loss_arrived(rec))
            return
        if step_is_empty(self):
            return
        # with optimizer= its post-hook closes a step that stepped: one still open after a backward
        # was not stepped (a GradScaler skip, or an optimizer step left out)
        stepped = False if self._optimizer_ref is not None and self._capture.backward_passes else None
        if _travels_with(loss, self._capture) and self._capture.capturing and self.on_nonfinite != "raise":
            _check_scalar(loss)  # read with the step's own transfer (see _record_step)
        else:
            loss = _to_float(loss) if loss is not None else None
        self._close_step(loss=loss, optimizer_stepped=stepped)

    def _close_step(self, loss: float | torch.Tensor | None, optimizer_stepped: bool | None,
                    check: bool = True) -> None:
        """Turn the open step into a record and open the next; never raises (it runs inside
        ``optimizer.step()``): a failure is reported once and the step's capture dropped. The one
        exception is ``on_nonfinite="raise"``, which the user asked for (after the bookkeeping)."""
        step = self.step_count
        rec = None
        try:
            rec = self._record_step(loss, optimizer_stepped)
        except Exception as exc:
            self._hook_error("<step>", exc)
            with contextlib.suppress(Exception):
                self._capture.discard_step()
        self._tainted = None
        self._auto_closed_pending_loss = False
        self.step_count += 1
        self._begin_step()
        bus.publish("step", self)
        if check and rec is not None and self.on_nonfinite == "raise":
            where = first_nonfinite(rec, rec.loss if loss is not None else None)
            if where is not None:
                raise error_for(self.name, step, where, self._batch)

    def _record_step(self, loss: float | torch.Tensor | None, optimizer_stepped: bool | None) -> StepRecord | None:
        step = self.step_count
        capture = self._capture
        why = self._tainted or (capture.changes.reason if capture.changes is not None else None)
        if why is not None and capture.capturing and (capture.touched or capture.began):
            capture.discard_step()
            say_once(self, "dropped", f"step {step} was not recorded: {why} while it was open, so its "
                     "numbers would mix two states. Later steps are recorded as usual.")
            if self._cross is not None:  # the other ranks exchange this step: join them, with nothing
                try:
                    self._cross.dropped(step, time.perf_counter() - capture.step_started)
                except Exception as exc:  # ours: report, never break training
                    self._hook_error("<distributed>", exc)
                self._say_cross_off()
            return None
        if capture.capturing and self._optimizer_ref is None and capture.detail:
            capture.measure_step_grads()  # post-clipping gradients: clipping is seen without optimizer=
        staged = loss if isinstance(loss, torch.Tensor) else None
        rec = capture.harvest(step, loss=staged) if capture.capturing else None
        if staged is not None:
            loss = capture.buffer.fetched_loss() if rec is not None else _to_float(staged)
        if rec is not None:
            rec.loss = loss if loss is not None else float("nan")
            rec.loss_given = loss is not None
            rec.grad_scale = self._scale_this_step
            if self._nan_tracer is not None:
                rec.nan_events = self._nan_tracer.harvest()
            opt = self._optimizer_ref() if self._optimizer_ref is not None else None
            if opt is not None:
                rec.lrs = tuple(float(g.get("lr", float("nan"))) for g in opt.param_groups)
                rec.optimizer_stepped = optimizer_stepped
            cross = self._exchange(rec)
            with bus.lock:
                self._last_record = rec
                metrics = self._history.append(rec)
                self._detect(lambda: self._detectors.update(rec, metrics=metrics))
            self._check_empty(rec)
            if self._recorder is not None:
                try:
                    self._recorder.on_step(rec, metrics)
                except Exception as exc:  # the recording must never break training
                    self._hook_error("<recording>", exc)
            if self._tensorboard is not None:
                self._tensorboard.write_latest(with_loss=loss is not None)
            for finding in cross:
                _warn_finding(self.name, finding)
        elif self._cross is not None:
            self._cross.skip()
        return rec

    def _detect(self, run) -> None:
        try:
            new = run()
        except Exception as exc:  # detectors are ours: report, never break training
            self._hook_error("<detectors>", exc)
            new = []
        for finding in new:
            _warn_finding(self.name, finding)

    def _exchange(self, rec: StepRecord) -> list:
        """In a torch.distributed job: launch this step's one cross-rank collective (see distributed/);
        the previous step's, complete by now, is judged first. Returns the cross-rank findings to warn
        about, and first applies what the previous step's packets said about a NaN/Inf another rank fed
        into the all-reduce (before this step's detectors read the weights it wrote)."""
        ctx, cross = self._rank_ctx, self._cross
        if ctx is not None:  # what the NaN/Inf origin may conclude on a rank another rank poisoned
            self._detectors.distributed(reduced=ctx.ddp is not None or ctx.sharded,
                                        peers_known=cross is not None and not cross.disabled)
        if cross is None:
            return []
        try:
            if self._cross_capture is None or self._cross_capture() is not self._capture:
                cross.relayout(Layout.of(self._capture, cross.ctx))  # re-made after a model edit: on every rank
                self._cross_capture = weakref.ref(self._capture)
            cross.start(rec, time.perf_counter() - self._capture.step_started)
            found = cross.take_found()
        except Exception as exc:  # ours: report, never break training
            self._hook_error("<distributed>", exc)
            return []
        self._peers_nonfinite()
        self._say_cross_off()
        return found

    def _peers_nonfinite(self) -> None:
        """Judged cross-rank steps where other ranks went non-finite and this one did not: tell the
        NaN/Inf origin (only about the last recorded step: the one whose weights are read next)."""
        prev = self._last_record
        for step, ranks in self._cross.take_peers():
            if prev is not None and prev.step == step:
                with bus.lock:
                    self._detect(lambda r=ranks: self._detectors.peer_nonfinite(prev, r))

    def _say_cross_off(self) -> None:
        if self._cross is not None and self._cross.disabled:
            say_once(self, "cross-off", f"rank {self._cross.rank}: {self._cross.disabled}")

    def _check_empty(self, rec: StepRecord) -> None:
        """Never silently empty tables: say once why nothing per-layer was seen."""
        if self._warned_empty or rec.forward_order or not rec.param_seen[:, 1].any():
            return
        self._warned_empty = True
        model = self.model
        if model is not None and self._capture.eval_forwards_with_grad:
            warnings.warn(f"gradsight: step {rec.step} of {self.name!r} trained with the model in eval() mode "
                          "(model.training is False): Dropout is off and BatchNorm normalises with its running "
                          "statistics, and gradsight captures train-mode forwards only. If that is not deliberate, "
                          "call model.train() after evaluating; if it is (frozen BatchNorm), only parameter "
                          "statistics are recorded.", GradsightWarning, stacklevel=4)
            return
        why = ("the forward ran under torch.no_grad() or through torch.compile"
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

    # --- queries (the rest is RunQueries, over self._history) ----------------------------
    def _findings_frame(self, all: bool = False) -> pd.DataFrame:  # noqa: A002 - w.findings(all=True)
        """The one order of findings, everywhere they are shown: by first step, then severity
        (error, warning, info), then layer in model order (whole-model findings first)."""
        df = self._detectors.frame(all=all)
        if self.world_size > 1:  # a rank column: the rank each finding comes from or names
            df["rank"] = np.full(len(df), self.rank, dtype=np.int64)
        if self._cross is not None:
            try:
                self._cross.settle(QUERY_WAIT_S)  # the last step's collective: judged before it is shown
                self._peers_nonfinite()
            except Exception as exc:  # ours: report, never break a query
                self._hook_error("<distributed>", exc)
            cross = self._cross.frame(all=all)
            df = pd.concat([df, cross], ignore_index=True) if len(cross) else df
        if len(df) < 2:
            return df
        key = pd.DataFrame({"step": df["step"], "rank": df["severity"].map(SEVERITY_RANK).fillna(len(SEVERITY_RANK)),
                            "layer": df["layer"].map(self._history.index).fillna(len(self._history.names))})
        return df.loc[key.sort_values(["step", "rank", "layer"], kind="stable").index].reset_index(drop=True)

    @property
    def rank(self) -> int:
        """This process's rank in its torch.distributed job (0 outside one)."""
        return self._rank_ctx.rank if self._rank_ctx is not None else 0

    @property
    def world_size(self) -> int:
        return self._rank_ctx.world_size if self._rank_ctx is not None else 1

    def _start_cross(self, checksum_every: int) -> None:
        """In a job: agree with the other ranks' watchers (c10d store, bounded wait), then exchange one
        packet per captured step. Disagreement or absence: one warning, and no collective ever."""
        ctx = self._rank_ctx
        if ctx is None:
            return
        warn_opaque(ctx, self.name)
        try:
            layout = Layout.of(self._capture, ctx)
            why = agree(ctx.rank, ctx.world_size, layout.signature)
        except Exception as exc:  # a store that cannot be reached: no collective is safer than a hang
            why = f"the handshake through the process group's store failed ({type(exc).__name__}: {exc})"
        if why:
            self._cross_off = why
            say_once(self, "cross-off", f"rank {ctx.rank}/{ctx.world_size}: {why}. This watcher runs without "
                     "the cross-rank part (no w.ranks(), no rank_nonfinite / replica_divergence / straggler), so "
                     "it never waits for the other ranks; its own statistics are captured as usual. Call "
                     "gs.watch on the same model in every rank, or pass distributed=False to silence this.")
            return
        self._cross = CrossRank(ctx, layout, checksum_every)
        self._cross_capture = weakref.ref(self._capture)
        if self._cross.setup_error is not None:
            self._hook_error("<distributed: communication hook>", self._cross.setup_error)

    def ranks(self) -> pd.DataFrame:
        """One row per rank of the torch.distributed job: median step, forward, backward, all-reduce
        and busy times, non-finite steps, and the findings naming that rank (every rank holds all)."""
        if self._cross is None:
            raise ValueError(self._no_cross("w.ranks()"))
        return self._cross.ranks(self.findings())

    def _no_cross(self, what: str) -> str:
        if self._rank_ctx is None:
            return (f"gradsight: {what} needs a torch.distributed job with world size > 1; this watcher was "
                    "created outside one. Call gs.watch(model) after torch.distributed.init_process_group(), "
                    "inside each process.")
        return f"gradsight: {what}: this watcher has no cross-rank part: {self._cross_off}."

    def _rank_scalars(self, step: int) -> np.ndarray | None:
        """This rank's RANK_METRICS at ``step`` if it was just exchanged (O(1): the recorder's per-step read)."""
        return self._cross.latest(step) if self._cross is not None else None

    def _rank_history(self, metric: str, rank: int) -> pd.DataFrame:
        if self._cross is None:
            raise ValueError(self._no_cross(f"history({metric!r}, rank={rank})"))
        return self._cross.history(metric, rank)

    def last_record(self) -> StepRecord | None:
        return self._last_record

    def memory_bytes(self) -> int:
        """Host memory held by the bounded history (the documented cap is ~64 MiB)."""
        return self._history.nbytes

    def gradcheck(self, layer: str, mode: str = "full", **kwargs):
        """Finite-difference check of ``layer`` on the inputs it saw in the last training step."""
        if self.closed:
            raise RuntimeError(f"gradsight: gradcheck({layer!r}): watcher {self.name!r} is closed, so it keeps no "
                               "inputs. Call gs.watch(model) again and run a training step, or check a module "
                               "directly with gs.gradcheck(module, *inputs).")
        i = self._layer_index(layer, "gradcheck")
        model = self.model
        if model is None:
            raise RuntimeError("gradsight: the watched model no longer exists.")
        entry = self._capture.last_inputs.get(i)
        if (entry is None or entry[0] < 0) and i in self._capture.inputs_not_kept:
            from .kernel_hooks.sampling import MAX_KEPT_TOTAL
            raise ValueError(f"gradsight: gradcheck({layer!r}): this layer's inputs were not kept. A watcher keeps at "
                             f"most {MAX_KEPT_TOTAL:,} elements of layer inputs per step (in the order layers finish "
                             "their forward, so that a large model does not hold a copy of its activations), and "
                             "this layer came after that was spent. Check it directly: "
                             f"gs.gradcheck(model.get_submodule({layer!r}), *inputs) with a few samples of its input.")
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

    def save(self, path) -> None:
        """Write what this watcher holds to the recording directory ``path`` (``gs.open`` reads it)."""
        from .recording.save import save

        save(self, path, hist_kinds=HIST_KINDS)

    # --- display ------------------------------------------------------------------------
    def dashboard(self):
        """A live ipywidgets dashboard (imported on first use)."""
        from .widgets.dashboard import Dashboard

        return Dashboard(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.step_count} steps"
        return f"<gradsight.Watcher {self.name!r}: {len(self.layer_names)} layers, {state}>"

    def _repr_html_(self) -> str:
        from .widgets.summary_html import watcher_html  # plain HTML, no matplotlib

        return watcher_html(self)


def _identities(tensors) -> dict[int, weakref.ref]:
    """id -> weak reference: membership that an id reused by a new tensor cannot fool."""
    return {id(t): weakref.ref(t) for t in tensors}


def _travels_with(loss: Any, capture: Capture) -> bool:
    """A loss on the device of the step's buffer rides in its one transfer; on another device
    (model parallelism) its copy would not be covered by that device's wait, so it is read apart."""
    return isinstance(loss, torch.Tensor) and loss.device.type != "cpu" and loss.device == capture.buffer.device


def _check_scalar(loss: torch.Tensor) -> None:
    if loss.numel() != 1:
        raise ValueError(f"gradsight: step(loss=...) expects a scalar; got a tensor of shape {tuple(loss.shape)}.")


def _to_float(loss: Any) -> float:
    if isinstance(loss, torch.Tensor):
        _check_scalar(loss)
        return float(loss.detach())  # a host read at the step boundary
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


def _warn_finding(name: str, finding: Any) -> None:
    msg = getattr(finding, "message", str(finding))
    layer = getattr(finding, "layer", "")
    kind = getattr(finding, "kind", "finding")
    where = f"layer {layer!r}" if layer else "the whole model"
    warnings.warn(f"gradsight [{name}] {kind} at {where}: {msg}", GradsightWarning, stacklevel=user_stacklevel())


def watch(model: nn.Module, *, optimizer: torch.optim.Optimizer | None = None, every: int = 1,
          histogram_every: int = 10, bins: int = 64, activations: bool = True, thresholds: Any = None,
          name: str | None = None, scaler: Any = None, nan_trace: str = "module", include: Any = None,
          exclude: Any = None, on_nonfinite: str = "warn", tensorboard: Any = None, record: Any = None,
          checksum_every: int = 10, distributed: bool = True) -> Watcher:
    """Watch ``model`` while it trains; re-watching a model replaces the old watcher.

    optimizer: closes each step for you after ``optimizer.step()`` and records learning rates.
    every: capture every n-th step. histogram_every: histograms (and update norms) every n-th
    captured step. bins: histogram bins (even). activations: also summarise module outputs.
    thresholds: detector thresholds (``gs.Thresholds``). scaler: the ``GradScaler`` in use, so
    gradients are reported unscaled and skipped steps are recognised. nan_trace: "module"
    (default, cheap) or "op" (the exact op and source line of the first NaN/Inf). record: a
    directory to stream the run into while it trains (``gs.open(path)`` reads it, from any
    process), or ``gs.RecordTo(path, flush_steps=, flush_seconds=)``.
    include/exclude: glob patterns on qualified module names and class names (``"encoder.*"``,
    ``"Dropout"``); only the selected modules (and the root) get hooks; ``w.layers()`` lists them.
    on_nonfinite: "warn" (default), "raise" (``gs.NonFiniteError`` with the batch) or "skip"
    (that ``optimizer.step()`` does not run); see :mod:`gradsight.nonfinite`.
    tensorboard: a log directory; each closed step is also written there as TensorBoard events.
    checksum_every: in a torch.distributed job, compare replicas' parameter checksums every n-th
    captured step (``replica_divergence``; see gradsight/detectors/replica_divergence.py).
    distributed: inside a torch.distributed job, exchange one small packet per captured step with
    the other ranks (cross-rank findings, ``w.ranks()``). This is a collective: watch on every rank.
    The watchers first meet through the process group's store (at most a few seconds,
    ``gradsight.distributed.handshake.TIMEOUT``); a rank that does not watch, or watches another
    model, makes every watcher warn once and run without the cross-rank part, never wait.
    ``distributed=False`` skips all of it (watch on some ranks only, silently). With ``record=``,
    each rank writes its own shard of one recording (docs/recording-format.md).
    """
    return Watcher(model, optimizer=optimizer, every=every, histogram_every=histogram_every, bins=bins,
                   activations=activations, thresholds=thresholds, name=name, scaler=scaler,
                   nan_trace=nan_trace, include=include, exclude=exclude, on_nonfinite=on_nonfinite,
                   tensorboard=tensorboard, record=record, checksum_every=checksum_every, distributed=distributed)

