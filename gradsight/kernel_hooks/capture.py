"""The hooks: everything that touches the live model during a training step.

Forward hooks summarise module outputs and place tensor hooks on them, so the gradient
w.r.t. each output is summarised when backward reaches it (``register_full_backward_hook``
breaks on in-place ops such as ``ReLU(inplace=True)``; tensor hooks do not).
Parameter gradients come from ``register_post_accumulate_grad_hook``, which sees the
accumulated value before any clipping. All summaries are written into one
:class:`~.step_buffer.StepBuffer` on the device and cross to the host once, in
:meth:`Capture.harvest`.

State lives here, keyed by module index — never on the user's modules or tensors.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..records.fields import F
from ..records.histogram import rebin_many
from ..records.step_record import StepRecord
from . import sampling
from .backward_pass import TrainingPass
from .filters import hookable
from .grad_carry import GradCarry
from .histogram import octave_counts
from .model_changes import ModelChanges
from .sampling import plan, slice_batch
from .saved_bytes import SavedBytes
from .step_buffer import StepBuffer
from .summary import PARALLEL_MIN, Light, l2_norm, measure
from .tensors import float_tensors, grad_values, local_tensor, tensor_key

if TYPE_CHECKING:
    from .nan_trace import NanTracer

# Units of these can "die": no positive output for any sample.
RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.RReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU,
               nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish)
# Bounded activations whose gradient vanishes near the limits: (low, high) of the output.
SATURATING = {nn.Sigmoid: (0.0, 1.0), nn.Tanh: (-1.0, 1.0), nn.Softsign: (-1.0, 1.0),
              nn.Hardsigmoid: (0.0, 1.0)}
SATURATION_MARGIN = 0.01  # "pinned": within 1% of the output range from a limit
_NONFINITE = [F["nan"], F["posinf"], F["neginf"]]


def _foreach_norm(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """L2 norms of many tensors in one fused op (as clip_grad_norm_ does), as float32 —
    half types accumulate and return in float32 (a bfloat16 norm has 3 significant digits)."""
    try:
        if all(t.dtype in (torch.float16, torch.bfloat16, torch.float32) for t in tensors):
            return list(torch._foreach_norm(tensors, 2, dtype=torch.float32))
        norms = torch._foreach_norm(tensors)
    except Exception:  # mixed devices or an older torch
        norms = [torch.linalg.vector_norm(t) for t in tensors]
    return [n if n.dtype == torch.float32 else n.float() for n in norms]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


_F32_MAX = float(torch.finfo(torch.float32).max)


def _fit32(x: torch.Tensor) -> torch.Tensor:
    """Finite values beyond float32's range saturate at its maximum instead of becoming Inf
    in the float32 step buffer: "huge" stays distinguishable from "non-finite"."""
    return torch.where(torch.isfinite(x), x.clamp(max=_F32_MAX), x)


def _compiling() -> bool:
    """Dynamo is tracing the hook. Hooks check that their ``module`` is the one they were put on
    (``copy.deepcopy`` copies hook tables, so a copy's forwards would write into the watched
    model's step), except while tracing: touching ``module`` there trips dynamo's mutation
    tracking, so the check short-circuits before it."""
    return torch.compiler.is_compiling()


def _unit_dims(ndim: int) -> tuple[int, ...] | None:
    """Dimensions to reduce so that one value per unit remains.

    (N, F) and (N, L, F): features are last; (N, C, H[, W[, D]]): channels are dim 1.
    """
    if ndim == 2:
        return (0,)
    if ndim == 3:
        return (0, 1)
    if ndim >= 4:
        return (0,) + tuple(range(2, ndim))
    return None


class Capture:
    """Hooks on one model and the device buffer they fill. Owned by a Watcher."""

    def __init__(self, model: nn.Module, *, activations: bool, bins: int,
                 on_error: Callable[[str, BaseException], None],
                 on_root_forward: Callable[[], Capture | None] | None = None,
                 modules: list[tuple[str, nn.Module]] | None = None):
        """``modules``: the ``(name, module)`` pairs to hook (root first; default: all of them,
        see :func:`.filters.select_modules`)."""
        self._model = weakref.ref(model)
        named = list(model.named_modules()) if modules is None else list(modules)
        self.activations = activations
        self.bins = bins
        # held weakly: the watcher owns this capture, a strong reference back would be a cycle
        self._on_error_ref = weakref.WeakMethod(on_error) if hasattr(on_error, "__self__") else (lambda: on_error)
        self.names: list[str] = [name for name, _ in named]
        self.types: list[str] = [type(m).__name__ for _, m in named]
        self.index = {name: i for i, name in enumerate(self.names)}
        L = len(self.names)
        modules = [m for _, m in named]
        self.module_ids = [id(m) for m in modules]  # which module each row is (for re-indexing)
        self._module_refs = [weakref.ref(m) for m in modules]  # row order (saved bytes are counted by row)
        self.relu_rows = {i for i, m in enumerate(modules) if isinstance(m, RELU_FAMILY)}
        # inputs kept for the in-model gradcheck: modules with their own parameters, or user
        # classes (custom layers); plain torch activations and containers are not worth a copy
        self.keep_inputs = {i for i, m in enumerate(modules)
                            if any(True for _ in m.parameters(recurse=False))
                            or not type(m).__module__.startswith("torch.nn")}
        self.sat_limits = {i: SATURATING[type(m)] for i, m in enumerate(modules) if type(m) in SATURATING}
        for i, m in enumerate(modules):
            if isinstance(m, nn.Hardtanh):
                self.sat_limits[i] = (float(m.min_val), float(m.max_val))
        # nn.MultiheadAttention uses out_proj's weights without calling it: its output *is*
        # the attention output, so that row mirrors the attention module's activations.
        self.aliases: dict[int, int] = {}
        for i, (name, m) in enumerate(named):
            if isinstance(m, nn.MultiheadAttention):
                child = f"{name}.out_proj" if name else "out_proj"
                if child in self.index:
                    self.aliases[self.index[child]] = i
        # the rows a module's output is written to: its own, and those of the rows aliasing it
        self._rows = [[i] + [a for a, parent in self.aliases.items() if parent == i] for i in range(L)]

        # parameters: each owned by the module that registers it directly
        self.param_names: list[str] = []
        owner: list[int] = []
        self._params: list[weakref.ref] = []
        seen: set[int] = set()
        for i, m in enumerate(modules):
            for pname, p in m.named_parameters(recurse=not hookable(m)):  # a TorchScript row owns its insides
                if id(p) in seen:  # tied weights count once, at their first owner
                    continue
                seen.add(id(p))
                self.param_names.append(f"{self.names[i]}.{pname}" if self.names[i] else pname)
                owner.append(i)
                self._params.append(weakref.ref(p))
        if not self._params:
            raise ValueError(
                f"gradsight.watch: the model ({type(model).__name__}) has no parameters, so there are no "
                "gradients to watch. Pass the nn.Module you train (the one whose parameters the optimizer updates)."
            )
        self.param_layer = np.asarray(owner, dtype=np.int64)
        self.layers_with_params = sorted(set(owner))
        device = next(model.parameters()).device
        hist_keys = [(i, of) for of in ("activation", "grad") for i in range(L)]
        hist_keys += [(i, "weight") for i in self.layers_with_params]
        self.buffer = StepBuffer(L, len(self._params), device, hist_keys)

        self._handles: list = []
        self._tensor_handles: list = []
        self._closed = False
        self.paused = False          # while gradsight itself calls the model (in-model gradcheck)
        self.capturing = False       # this step is sampled (step % every == 0)
        self.detail = False          # this step takes full statistics, histograms, weight norms
        self.measure_update = False  # this step measures update norms
        # when the weights are copied for the update norm: "optimizer" (just before a torch
        # optimizer's step: the copy does not sit through forward and backward, on top of the
        # activations), "forward" (at the forward's start: updates made by hand), "unknown" until
        # one is seen (a measuring step closed without an optimizer step makes it "forward")
        self.update_source = "unknown"
        self.saved = SavedBytes(L)   # bytes saved for backward, per layer (detail steps)
        self.step_started = time.perf_counter()  # the previous step's close (set by the watcher)
        # own parameters of each layer, for the finiteness check of a layer whose output is non-finite
        self._own_params: dict[int, list[int]] = {}
        for j, i in enumerate(owner):
            self._own_params.setdefault(i, []).append(j)
        self._reset_step_state()
        self.last_inputs: dict[int, tuple[int, tuple, dict]] = {}
        self.inputs_not_kept: set[int] = set()  # layers the per-step bound left out (last detail step)
        self.on_root_inputs: Callable[[tuple, dict], None] | None = None  # gs.watch(on_nonfinite="raise")
        self.trace: NanTracer | None = None  # gs.watch(nan_trace="op"): its mode is left during our hooks
        self.began = False          # a training forward started since the watcher's last step boundary
        self._root_open = False     # the root's forward started and has not returned (yet)
        self._index_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._snapshot_store: list[torch.Tensor | None] | None = None  # reused by _take_snapshot
        self._stepped: set[int] | None = None  # parameters whose update is measured (None: all)
        self.carry = GradCarry(self._traceless)  # a forgotten zero_grad (see grad_carry.py)
        self._training_pass = TrainingPass(self._params)  # .backward(), not autograd.grad to the inputs
        self.eval_forwards_with_grad = 0  # forwards in eval() mode with gradients enabled, ever
        self.changes: ModelChanges | None = None
        try:
            self._register(model, modules, on_root_forward)
            self.changes = ModelChanges(model, modules, self.parameters())
        except BaseException:  # roll back: a failed watch leaves no hook on the model
            self.remove()
            raise

    def _on_error(self, where: str, exc: BaseException) -> None:
        report = self._on_error_ref()
        if report is not None:
            report(where, exc)

    # --- what the watcher may read ----------------------------------------------------
    def limit_updates(self, stepped: dict[int, weakref.ref]) -> None:
        """Measure updates only of the parameters in ``stepped`` (id -> weakref: those the
        ``optimizer=`` given steps). The step closes right after that optimizer's step, before
        a second optimizer (``SparseAdam`` for sparse embeddings, another for some parameter
        groups) moves its own, so theirs would read as an exact 0; unmeasured, they are NaN."""
        held = {j for j, ref in enumerate(self._params)
                if (p := ref()) is not None and (r := stepped.get(id(p))) is not None and r() is p}
        self._stepped = None if len(held) == len(self._params) else held

    def parameters(self) -> list[nn.Parameter]:
        """The watched parameters that still exist, in model order."""
        return [p for ref in self._params if (p := ref()) is not None]

    def param_counts(self) -> np.ndarray:
        """Number of parameter elements each layer owns (its own, not its children's), by layer."""
        counts = np.zeros(len(self.names), dtype=np.int64)
        for j, ref in enumerate(self._params):
            p = ref()
            if p is not None:
                counts[self.param_layer[j]] += p.numel()
        return counts

    # --- registration ---------------------------------------------------------------
    def _register(self, model: nn.Module, modules: list[nn.Module], on_root_forward) -> None:
        self._handles.append(model.register_forward_pre_hook(self._make_root_pre_hook(on_root_forward),
                                                             with_kwargs=True))
        for i, m in enumerate(modules):
            if hookable(m):
                self._handles.append(m.register_forward_hook(self._make_forward_hook(i), with_kwargs=True))
        for ref in self._params:
            p = ref()
            if p is not None and p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._param_hook))

    def remove(self) -> None:
        """Remove every hook this capture placed: modules, parameters and live tensors."""
        self._closed = True
        self.carry.drop()
        for h in self._handles + self._tensor_handles:
            h.remove()
        self._handles.clear()
        self._tensor_handles.clear()
        self._produced.clear()
        self.last_inputs.clear()
        self._snapshot = self._snapshot_store = None
        if getattr(self, "saved", None) is not None:
            self.saved.end()
        if self.changes is not None:
            self.changes.remove()

    def discard_step(self) -> None:
        """Forget everything captured in the open step (a forward that raised, a backward that
        was interrupted, a step that failed to close): its numbers would mix two states."""
        for h in self._tensor_handles:
            h.remove()
        self._tensor_handles.clear()
        self.last_inputs = {i: e for i, e in self.last_inputs.items() if e[0] != -1}
        self.saved.take()  # stop counting saved bytes (a raised forward never reached its end)
        self.buffer.reset()
        self._reset_step_state()

    @property
    def interrupted_backward(self) -> bool:
        """A backward started (a gradient hook queued the end-of-backward callback) but never
        finished: autograd drops queued callbacks when the backward raises."""
        return self._end_queued and not _in_backward()

    def grads_moved(self) -> bool:
        """Since the last complete backward, were the gradients zeroed or the weights updated
        (by anything: an optimizer, a manual update)? O(1): one parameter's version counters."""
        mark = self._grad_mark
        if mark is None:
            return False
        pref, version, gref, gversion = mark
        p = pref()
        if p is None:
            return False
        g = p.grad
        return p._version != version or g is None or g is not gref() or g._version != gversion

    # --- per-step state ---------------------------------------------------------------
    def _reset_step_state(self) -> None:
        # output tensor -> (weakref, its summary, the module that produced it, its histogram counts
        # on detail steps): a container returning its child's output reuses both
        self._produced: dict[tuple[int, int], tuple[weakref.ref, object, int, torch.Tensor | None]] = {}
        self._grad_rows: dict[tuple[int, int], tuple[weakref.ref, list[int]]] = {}
        self._input_sources: dict[int, set[int]] = {}
        self._pending_units: dict[int, torch.Tensor] = {}
        self._snapshot: list[torch.Tensor | None] | None = None
        self.forward_order: list[int] = []
        self.backward_order: list[int] = []
        self._kept_elements = 0  # layer-input elements kept for the in-model gradcheck this step
        self._fwd_seen: set[int] = set()
        self._bwd_seen: set[int] = set()
        self.dtypes: dict[int, str] = {}
        self.grad_dtypes: dict[int, str] = {}
        self.forward_s = 0.0
        self._fwd_start: float | None = None
        self._first_fwd: float | None = None
        self._opt_start: float | None = None
        self._param_bad_fwd: set[int] = set()   # parameters seen non-finite during this step's forward
        self._param_ok_fwd: set[int] = set()    # ... and seen finite
        self._bwd_first: float | None = None
        self._bwd_last: float | None = None
        self.backward_passes = 0
        self.forward_passes = 0
        self.touched = False  # any hook did something this step
        self._end_queued = False
        self.completed_backwards = 0
        self._grad_mark: tuple | None = None  # see grads_moved
        self._updating = False  # an optimizer is about to step (or stepped) this step's parameters
        self._grad_versions: dict[int, tuple[int, int]] = {}  # parameter -> (id, version) of the grad measured

    def _live(self) -> bool:
        """Capture only training forwards: grad enabled and the model in train mode."""
        if self._closed or self.paused or not self.capturing or not torch.is_grad_enabled():
            return False
        model = self._model()
        return model is not None and model.training

    # --- hooks ----------------------------------------------------------------------
    def _make_root_pre_hook(self, on_root_forward):
        # on_root_forward (the watcher's) is held by this closure, i.e. by the model's hook
        # table: an open watcher lives as long as its model; closed, nothing holds it
        root = id(self._model())

        def pre_hook(module, args, kwargs):
            if self._closed or not torch.is_grad_enabled() or _in_backward() or (
                    not _compiling() and id(module) != root):  # a deep copy's (see _compiling)
                return None
            target = self
            if on_root_forward is not None:
                # the watcher may close a step (skipped, forgotten) or follow a model change,
                # after which a new capture takes this forward
                target = on_root_forward() or self
            target._root_forward_starts(args, kwargs)
            return None

        return pre_hook

    def _root_forward_starts(self, args: tuple, kwargs: dict) -> None:
        if self._closed or self.paused:
            return
        self.began = True  # a forward with gradients: w.step() after it closes a real step
        if self.on_root_inputs is not None:
            try:
                self.on_root_inputs(args, kwargs)
            except Exception as exc:
                self._on_error(self.names[0], exc)
        model = self._model()
        if model is None or not model.training:
            self.eval_forwards_with_grad += model is not None  # not captured; said if a step had only these
            return
        self._root_open = True
        if not self.capturing:
            return
        try:
            self._fwd_start = time.perf_counter()
            if self._first_fwd is None:
                self._first_fwd = self._fwd_start
            self.forward_passes += 1
            if self.detail:
                self.saved.begin([r() for r in self._module_refs], self.parameters())
            if self.measure_update and self._snapshot is None and self.update_source == "forward":
                self._take_snapshot()
        except Exception as exc:  # a debugger must never break the training step
            self._on_error(self.names[0], exc)

    def _note_inputs(self, i: int, args: tuple, kwargs: dict, outputs: list[torch.Tensor]) -> None:
        """Where each input came from (for the NaN origin), and a copy for the in-model gradcheck.

        Done after the forward (one hook per module instead of two): an input that is one of
        the outputs (an in-place module) says nothing about the inputs' finiteness.
        """
        sources = self._input_sources.setdefault(i, set())
        for t in float_tensors(args if not kwargs else (args, kwargs)):
            if any(t is o for o in outputs):
                continue
            hit = self._produced.get(tensor_key(t))
            if hit is not None and hit[0]() is t:
                sources.add(hit[2])
            elif t.numel():
                # an input no watched module produced: one pass tells finite or not
                self.buffer.add_input(i, t.detach().sum(dtype=torch.float32))
        if self.detail and i in self.keep_inputs:
            # a few samples, bounded per layer (MAX_SAMPLES / MAX_CAPTURE_ELEMENTS) and per step
            # (MAX_KEPT_TOTAL, spent in the order layers finish): a layer past it keeps nothing new
            room = sampling.MAX_KEPT_TOTAL - self._kept_elements
            keep, size = plan(args, kwargs, max_elements=min(sampling.MAX_CAPTURE_ELEMENTS, room))
            if size > room:
                self.inputs_not_kept.add(i)
                return
            self._kept_elements += size
            self.inputs_not_kept.discard(i)
            self.last_inputs[i] = (-1, *slice_batch(args, kwargs, keep=keep, share=True))  # the step is filled in at harvest

    def _leave_trace(self) -> bool:
        """Run a hook's tensor work outside the exact-NaN tracer's dispatch mode (see
        :meth:`.nan_trace.NanTracer.pause`); True when the caller must ``trace.resume()``."""
        trace = self.trace
        return trace is not None and trace.pause()

    def _make_forward_hook(self, i: int):
        mid = self.module_ids[i]

        def forward_hook(module, args, kwargs, output):
            if not _compiling() and id(module) != mid:  # a deep copy's (see _compiling)
                return None
            if i == 0:
                self._root_open = False  # the root's forward returned
            if not self._live():
                return None
            paused = self._leave_trace()
            try:
                in_bwd = _in_backward()
                if in_bwd and i in self._fwd_seen:
                    return None
                self.touched = True
                if i not in self._fwd_seen:
                    self._fwd_seen.add(i)
                    self.forward_order.append(i)
                if not in_bwd:
                    self.saved.finish(i)
                if i == 0 and self._fwd_start is not None and not in_bwd:
                    self.forward_s += time.perf_counter() - self._fwd_start
                    self.saved.end()
                tensors = list(float_tensors(output))
                self._note_inputs(i, args, kwargs, tensors)
                if not tensors:
                    return None
                if i not in self.dtypes:
                    self.dtypes[i] = _dtype_name(tensors[0].dtype)
                rows = self._rows[i]
                hist = self.activations and self.detail
                counts = None
                for t in tensors:
                    key = tensor_key(t)
                    hit = self._produced.get(key)
                    if hit is not None and hit[0]() is t:
                        summary, mine = hit[1], hit[3]  # same tensor as a child's output: reuse both
                    else:
                        summary = measure(t, self.detail)
                        mine = octave_counts([t]) if hist else None
                        self._produced[key] = (weakref.ref(t), summary, i, mine)
                        if type(summary) is torch.Tensor and summary.device.type == "cpu" \
                                and i in self._own_params:
                            self._check_own_params(i, summary)
                    if mine is not None:
                        counts = mine if counts is None else counts + mine
                    if self.activations:
                        for r in rows:
                            self._write(r, summary, t.numel())
                    if t.requires_grad:
                        self._watch_grad(t, key, rows)
                if self.activations:
                    if counts is not None:
                        for r in rows:
                            self.buffer.add_hist((r, "activation"), counts)
                    if i in self.relu_rows:
                        self._units(i, tensors[0])
                    if i in self.sat_limits and self.detail:
                        self._saturation(i, tensors[0])
            except Exception as exc:
                self._on_error(self.names[i], exc)
            finally:
                if paused:
                    self.trace.resume()
            return None

        return forward_hook

    def _check_own_params(self, i: int, summary: torch.Tensor) -> None:
        """A non-finite output (CPU: reading the summary is free): were this layer's own
        parameters already non-finite when it ran? Set by hand or loaded, they were not
        this step's computation. (On an accelerator this would need a host sync: there the
        detectors infer parameter finiteness from the previous steps.)"""
        bad = float(summary[F["nan"]] + summary[F["posinf"]] + summary[F["neginf"]])
        if not bad > 0:
            return
        for j in self._own_params[i]:
            p = self._params[j]()
            if p is not None and j not in self._param_bad_fwd and j not in self._param_ok_fwd:
                (self._param_ok_fwd if bool(torch.isfinite(local_tensor(p.detach())).all()) else self._param_bad_fwd).add(j)

    def _write(self, row: int, summary: torch.Tensor | float | Light, numel: int) -> None:
        if type(summary) is float:  # CPU light step: the sum of squares, already on the host
            self.buffer.write_value(row, summary, numel)
        elif type(summary) is Light:  # device light step
            self.buffer.write_light(row, summary.sumsq, summary.counts, numel)
        else:
            self.buffer.write_stats(row, summary, numel)

    def _watch_grad(self, t: torch.Tensor, key: tuple[int, int], rows: list[int]) -> None:
        hit = self._grad_rows.get(key)
        if hit is not None and hit[0]() is t:  # one hook per tensor, fanned out to every module returning it
            hit[1].extend(r for r in rows if r not in hit[1])
            return
        targets = list(rows)
        self._grad_rows[key] = (weakref.ref(t), targets)
        self._tensor_handles.append(t.register_hook(self._make_grad_hook(targets)))

    def _make_grad_hook(self, rows: list[int]):
        L = len(self.names)

        def grad_hook(grad):
            if self._closed or self.paused or grad is None or not self._training_pass():
                return None
            paused = self._leave_trace()
            try:
                now = time.perf_counter()
                if self._bwd_first is None:
                    self._bwd_first = now
                self._bwd_last = now
                self.touched = True
                self._queue_end_of_backward()
                if 0 in rows:
                    self.backward_passes += 1
                summary = measure(grad, self.detail)
                counts = octave_counts([grad]) if self.detail else None
                for r in rows:
                    self._write(L + r, summary, grad.numel())
                    if r not in self.grad_dtypes:
                        self.grad_dtypes[r] = _dtype_name(grad.dtype)
                    if r not in self._bwd_seen:
                        self._bwd_seen.add(r)
                        self.backward_order.append(r)
                    if counts is not None:
                        self.buffer.add_hist((r, "grad"), counts)
            except Exception as exc:
                self._on_error(self.names[rows[0]], exc)
            finally:
                if paused:
                    self.trace.resume()
            return None

        return grad_hook

    def _param_hook(self, p) -> None:
        """A parameter's gradient was accumulated: make sure the end of this backward pass
        measures all parameter gradients at once (cheap: no tensor work here)."""
        if not self._closed and not self.paused and self.capturing:
            self._queue_end_of_backward()

    def _keep_carry(self) -> None:
        """At a step's close: if an optimizer stepped the parameters since the backward, follow
        the gradient it used on one parameter it steps (:class:`~.grad_carry.GradCarry`)."""
        self.carry.drop()
        mark = self._grad_mark
        p = mark[0]() if mark is not None else None
        # moved: the optimizer's pre-step said so (fused optimizers bump no version counter)
        if p is None or not (self._updating or p._version != mark[1]):
            return
        if self._stepped is None:
            j = next((j for j, r in enumerate(self._params) if r is mark[0]), None)
        else:  # a parameter the given optimizer steps, not another's
            j = next((j for j, r in enumerate(self._params)
                      if j in self._stepped and (q := r()) is not None and q.grad is not None), None)
        if j is not None and (q := self._params[j]()) is not None:
            self.carry.keep(q, self.param_names[j])

    def _traceless(self, op):
        paused = self._leave_trace()
        try:
            with torch.no_grad():
                return op()
        finally:
            if paused:
                self.trace.resume()

    def _queue_end_of_backward(self) -> None:
        if not self._end_queued:
            self._end_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)

    def _end_of_backward(self) -> None:
        """All of one backward pass is done: one fused norm over every parameter gradient.

        This is the accumulated gradient before any clipping (clipping runs after backward);
        with gradient accumulation each pass overwrites, so the last one — the total — wins.
        """
        self._end_queued = False
        if self._closed:
            return
        paused = self._leave_trace()
        try:
            self._bwd_last = time.perf_counter()
            self.completed_backwards += 1
            self._mark_grads()
            self._param_norms(field=1, of_grad=True)
        except Exception as exc:
            self._on_error("<parameters>", exc)
        finally:
            if paused:
                self.trace.resume()

    def _mark_grads(self) -> None:
        for ref in self._params:  # the first parameter with a gradient (usually the first)
            p = ref()
            if p is not None and p.grad is not None:
                self._grad_mark = (ref, p._version, weakref.ref(p.grad), p.grad._version)
                return

    def _param_norms(self, field: int, of_grad: bool) -> None:
        index, tensors = [], []
        versions = self._grad_versions if of_grad else None
        for j, ref in enumerate(self._params):
            p = ref()
            t = None if p is None else (p.grad if of_grad else p)
            if t is not None:
                index.append(j)
                tensors.append(grad_values(t.detach()) if of_grad else local_tensor(t.detach()))
                if versions is not None:
                    versions[j] = (id(t), t._version)
        if tensors:
            self.buffer.set_params(self._device_index(index), index, field, self._sumsq_many(tensors))

    @staticmethod
    def _sumsq_many(tensors: list[torch.Tensor]) -> torch.Tensor:
        """Sums of squares of many tensors (float64, clamped to float32's range if finite):
        the small ones in one fused op, the large ones each on the intra-op pool (l2_norm)."""
        small = [k for k, t in enumerate(tensors) if t.numel() < PARALLEL_MIN]
        norms: list[torch.Tensor | None] = [None] * len(tensors)
        if small:
            for k, n in zip(small, _foreach_norm([tensors[k] for k in small]), strict=True):
                norms[k] = n
        for k, t in enumerate(tensors):
            if norms[k] is None:
                norms[k] = l2_norm(t).float()
        norms = torch.stack(norms)
        if norms.device.type == "cpu" and not torch.isfinite(norms).all():
            # a float32 norm overflows for finite values above ~1e19 (a large loss scale, a
            # diverging run); redo those in float64 so that non-finite means NaN/Inf (free on CPU)
            norms = norms.double()
            for k in torch.nonzero(~torch.isfinite(norms)).flatten().tolist():
                norms[k] = torch.linalg.vector_norm(tensors[k].double())
        return _fit32(norms.double() ** 2)

    def _update_norms(self) -> None:
        """How far the optimizer moved each parameter: ||after - before||, with the difference
        taken in place in the snapshot (no second copy of the model)."""
        index, before, after = [], [], []
        for j, ref in enumerate(self._params):
            p, old = ref(), self._snapshot[j]
            if p is not None and old is not None:
                index.append(j)
                before.append(old)
                after.append(local_tensor(p.detach()))
        if not index:
            return
        try:
            torch._foreach_sub_(before, after)
        except Exception:  # mixed devices or dtypes
            for b, a in zip(before, after, strict=True):
                b.sub_(a)
        self.buffer.set_params(self._device_index(index), index, 2, self._sumsq_many(before))

    def _device_index(self, index: list[int]) -> torch.Tensor:
        key = tuple(index)
        idx = self._index_cache.get(key)
        if idx is None:
            idx = self._index_cache[key] = torch.tensor(index, device=self.buffer.device)
        return idx

    def _units(self, i: int, y: torch.Tensor) -> None:
        dims = _unit_dims(y.dim())
        if dims is None:
            return
        per_unit = y.detach().amax(dim=dims).float()
        if not self.buffer.max_units(i, per_unit):
            prev = self._pending_units.get(i)
            self._pending_units[i] = per_unit if prev is None or prev.shape != per_unit.shape \
                else torch.maximum(prev, per_unit)

    def _saturation(self, i: int, y: torch.Tensor) -> None:
        lo, hi = self.sat_limits[i]
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        pinned = (torch.abs(y.detach().float() - mid) >= half * (1 - 2 * SATURATION_MARGIN)).sum()
        self.buffer.add_saturation(i, pinned.float(), y.numel())

    # --- parameter updates ------------------------------------------------------------
    def _take_snapshot(self) -> None:
        """Copy the parameters before the optimizer moves them (update-measuring steps only),
        into the same buffers each time: a fresh 10 MB allocation per step costs its page
        faults again (measured ~1 ms per 10 MB here)."""
        only = self._stepped
        params = [None if (p := ref()) is None or (only is not None and j not in only) else local_tensor(p.detach())
                  for j, ref in enumerate(self._params)]
        store = self._snapshot_store
        if store is None or len(store) != len(params) or any(
                (a is None) != (b is None) or (a is not None and (a.shape != b.shape or a.dtype != b.dtype
                                                                  or a.device != b.device))
                for a, b in zip(store, params, strict=True)):
            store = self._snapshot_store = [None if p is None else torch.empty_like(p) for p in params]
        pairs = [(s, p) for s, p in zip(store, params, strict=True) if p is not None]
        if pairs:
            try:
                torch._foreach_copy_([s for s, _ in pairs], [p for _, p in pairs])
            except Exception:  # an older torch
                for s_, p in pairs:
                    s_.copy_(p)
        self._snapshot = store

    def optimizer_pre_step(self) -> None:
        """Just before ``optimizer.step()``: the gradient the optimizer will use (after any
        clipping, so clipping shows as the ratio to the accumulated norm), and a snapshot
        of the weights on update-measuring steps."""
        self.carry.confirm()  # every step, captured or not
        if not self.capturing or self._closed:
            return
        self._opt_start = time.perf_counter()
        paused = self._leave_trace()
        try:
            self.measure_step_grads()
            self.before_update()
        finally:
            if paused:
                self.trace.resume()

    def before_update(self) -> None:
        """A torch optimizer is about to step these parameters (with or without ``optimizer=``):
        the moment to copy them on update-measuring steps."""
        self.update_source = "optimizer"
        self._updating = True
        self.carry.confirm()
        if self.capturing and not self._closed and self.measure_update and self._snapshot is None:
            self._take_snapshot()

    def measure_step_grads(self) -> None:
        """The gradients as they are now (after any clipping): at ``optimizer.step()``, or —
        without ``optimizer=`` — when ``w.step()`` closes a detail step, so that clipping is
        seen either way. A gradient untouched since the end of backward (same tensor, same
        version counter) is not read again: its norm is the one already measured."""
        if not self.capturing or self._closed:
            return
        seen = self._grad_versions
        same, index, tensors = [], [], []
        for j, ref in enumerate(self._params):
            p = ref()
            g = None if p is None else p.grad
            if g is None:
                continue
            if seen.get(j) == (id(g), g._version) and self.buffer.param_written[j, 1]:
                same.append(j)
            else:
                index.append(j)
                tensors.append(grad_values(g.detach()))
        if same:
            self.buffer.copy_param_field(self._device_index(same), same, 1, 3)
        if tensors:
            with torch.no_grad():
                self.buffer.set_params(self._device_index(index), index, 3, self._sumsq_many(tensors))

    # --- closing a step ---------------------------------------------------------------
    def harvest(self, step: int, loss: torch.Tensor | None = None) -> StepRecord:
        """Finish the step's device work, transfer once, and return the record. A ``loss``
        tensor on the device travels in the same transfer (read it with
        ``buffer.fetched_loss()``): one host sync per step, not two."""
        buf = self.buffer
        self._closing = time.perf_counter()
        paused = self._leave_trace()
        try:
            with torch.no_grad():
                if self.measure_update and self._snapshot is None and self.update_source == "unknown" \
                        and self.backward_passes:
                    self.update_source = "forward"  # a measuring step without an optimizer: from the next one on
                if self.detail:  # weights move slowly: measured on detail steps, in fused ops
                    self._param_norms(field=0, of_grad=False)
                    if self._snapshot is not None:
                        self._update_norms()
                        if not buf.on_cpu:
                            # on a device the caching allocator makes a new snapshot cheap, and one kept
                            # would sit through the next forward, on top of its activations (peak memory)
                            self._snapshot_store = None
                    for i in self.layers_with_params:
                        ps = [local_tensor(p) for j, ref in enumerate(self._params)
                              if self.param_layer[j] == i and (p := ref()) is not None]
                        if ps:
                            buf.add_hist((i, "weight"), octave_counts(ps))
                if self._pending_units:  # unit vectors first seen this step get their rows now
                    buf.reserve_units(self._pending_units)
                host = buf.fetch(with_hist=self.detail, loss=loss)
        finally:
            if paused:
                self.trace.resume()
        views = buf.host_views(host)
        rec = self._record(step, views)
        for i, entry in list(self.last_inputs.items()):
            if entry[0] == -1:
                self.last_inputs[i] = (step, entry[1], entry[2])
        for h in self._tensor_handles:
            h.remove()
        self._tensor_handles.clear()
        self._keep_carry()
        buf.reset()
        self._reset_step_state()
        return rec

    def _histograms(self, v: dict, stats: np.ndarray, numel: np.ndarray, step: int) -> dict:
        """The step's histograms, rebinned together (:func:`rebin_many`). Activations and
        gradients take their exact zero/NaN/Inf counts, size and largest magnitude from the
        full one-pass statistics of the same tensors; weights have none (their bins are all)."""
        buf, L = self.buffer, len(self.names)
        keys = [(key, row) for key, row in buf.hist_rows.items() if row in buf.hist_written]
        if not keys:
            return {}
        r = np.array([-1 if of == "weight" else i if of == "activation" else L + i for (i, of), _ in keys])
        has = r >= 0
        s = stats[np.where(has, r, 0)]
        nonzero = s[:, F["nonzero"]]
        n = numel[np.where(has, r, 0)]
        bad = s[:, _NONFINITE]
        with np.errstate(invalid="ignore"):
            exact_zero = np.where(has & np.isfinite(nonzero), n - nonzero - s[:, F["nan"]], -1).astype(np.int64)
            exact_bad = np.where((has & np.isfinite(bad).all(1))[:, None], bad, -1).astype(np.int64)
            lo, hi = np.abs(s[:, F["min"]]), np.abs(s[:, F["max"]])
            max_abs = np.where(has, np.where(hi > lo, hi, lo), np.nan)  # Python's max(lo, hi), NaN and all
        rows = rebin_many(v["hist"][[row for _, row in keys]], self.bins, exact_zero=exact_zero,
                          exact_nonfinite=exact_bad, exact_total=np.where(has, n, -1).astype(np.int64),
                          exact_max_abs=max_abs)
        return {key: rows.histogram(k, layer=self.names[key[0]], of=key[1], step=step)
                for k, (key, _) in enumerate(keys)}

    def _record(self, step: int, v: dict) -> StepRecord:
        buf = self.buffer
        L = len(self.names)
        stats = v["stats"].copy()
        written = buf.stat_written
        stats[~written] = np.nan
        numel = buf.stat_numel.astype(np.float64)
        # input finiteness: own unknown inputs, plus the outputs of the modules that produced them
        # a sum of squares can overflow for finite values: where counts were taken, they decide
        counts = stats[:L, F["nan"]] + stats[:L, F["posinf"]] + stats[:L, F["neginf"]]
        act_finite = np.where(np.isnan(counts), np.isfinite(stats[:L, F["sumsq"]]), counts == 0)
        input_finite = np.full(L, np.nan)
        for i, sources in self._input_sources.items():
            ok = True
            if buf.input_written[i]:
                ok = bool(np.isfinite(v["inputs"][i]))
            for s in sources:
                ok = ok and bool(act_finite[s])
            input_finite[i] = 1.0 if ok else 0.0
        sat = np.full(L, np.nan)
        for i in self.sat_limits:
            if buf.sat_numel[i]:
                sat[i] = v["saturation"][i] / buf.sat_numel[i]
        params = v["params"].copy()
        seen = buf.param_written.copy()  # the record keeps it; the buffer's is reset next step
        params[~seen] = np.nan
        units = {}
        for i in buf.units_written:
            off, size = buf.units_offsets[i]
            units[i] = v["units"][off:off + size].copy()
        hist = self._histograms(v, stats, numel, step) if "hist" in v else {}
        backward_s = (self._bwd_last - self._bwd_first) if self._bwd_first is not None \
            and self._bwd_last is not None else float("nan")
        # the step's time split: data (previous close -> first forward), forward, backward, optimizer
        # (its step with optimizer=; without, whatever ran between backward and w.step())
        data_s = self._first_fwd - self.step_started if self._first_fwd is not None else float("nan")
        after = self._opt_start if self._opt_start is not None else self._bwd_last
        optimizer_s = self._closing - after if after is not None else float("nan")
        finite_fwd = np.full(len(self._params), np.nan)
        finite_fwd[list(self._param_ok_fwd)] = 1.0
        finite_fwd[list(self._param_bad_fwd)] = 0.0
        return StepRecord(
            step=step, layers=tuple(self.names),
            act=stats[:L], act_numel=numel[:L], grad=stats[L:], grad_numel=numel[L:],
            input_finite=input_finite, saturation=sat,
            param_names=tuple(self.param_names), param_layer=self.param_layer,
            param_sumsq=params[:, 0], param_grad_sumsq=params[:, 1], param_update_sumsq=params[:, 2],
            param_step_grad_sumsq=params[:, 3], param_seen=seen, units=units, hist=hist,
            forward_order=list(self.forward_order), backward_order=list(self.backward_order),
            dtypes=dict(self.dtypes), grad_dtypes=dict(self.grad_dtypes),
            forward_s=self.forward_s if self.forward_passes else float("nan"), backward_s=backward_s,
            backward_passes=self.backward_passes, forward_passes=self.forward_passes, detail=self.detail,
            input_sources={i: tuple(sorted(s)) for i, s in self._input_sources.items() if s},
            data_s=data_s, optimizer_s=optimizer_s, saved_bytes=self.saved.take(),
            param_finite_at_forward=finite_fwd, stale_grad=self.carry.take(),
        )
