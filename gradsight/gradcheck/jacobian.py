"""The two Jacobians: analytic (what backward says) and numeric (central differences).

Analytic entries come either by rows, one vector-Jacobian product per output element,
or by columns, differentiating the VJP ``Jᵀv`` once more with respect to ``v`` (double
backward), which costs one pass per *input* element and so suits large outputs with few
compared columns. Either way a chunk of unit cotangents goes through one backward pass
batched by ``torch.func.vmap`` (its batching rules cover the backward kernels, e.g.
``convolution_backward``, that autograd's own ``is_grads_batched`` runs one slice at a
time: 3.7x faster on a custom conv Function); where vmap cannot run the backward
(numpy, ``.item()``, randomness inside it) ``is_grads_batched`` is tried, then one pass
per row. Batched results are checked against one plain backward pass; on disagreement
the plain path is used.
Numeric columns are evaluated in chunks so that no batch holds more than
``CHUNK_ELEMENTS`` float64 values.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from .errors import GradcheckError
from .evaluate import Evaluator

CHUNK_ELEMENTS = 2**19
"""Upper bound on (batch size x elements per item) for one batched call: 4 MiB of float64. The
intermediates of a forward or backward on a batch this size stay near the cache: per point,
measured up to 2x faster than 32 MiB batches (benchmarks/gradcheck.py, custom LayerNorm)."""


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def chunk_size(ev: Evaluator, i: int) -> int:
    """Columns of tensor ``i`` per chunk: 2 points per column, each input + output sized."""
    return max(1, CHUNK_ELEMENTS // max(1, 2 * (ev.bases[i].numel() + ev.layout.size)))


class NoColumns(Exception):
    """The backward cannot be differentiated again (or not faithfully): use rows instead."""


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence vmap's "performance drop" warnings: a slow batching rule still gives right numbers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*performance drop.*")
        yield


class AnalyticJacobian:
    """The gradient that the function's backward reports, for the checked tensors."""

    def __init__(self, ev: Evaluator, gen: torch.Generator) -> None:
        self.ev = ev
        self.gen = gen
        self.leaves = ev.leaves
        self.outs = ev.outs  # the compared outputs of the first call, with their graph
        self.diff = [k for k, o in enumerate(self.outs) if o.requires_grad]
        self.unused = [True] * len(self.leaves)
        self.batched_ok: bool | None = None
        self._use_func_vmap = True  # batch VJPs with torch.func.vmap; False: with is_grads_batched
        self._v: torch.Tensor | None = None  # for columns: Jᵀv as a differentiable function of v
        self._jtv: tuple[torch.Tensor | None, ...] | None = None
        self._probe: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        self._no_columns = ""  # why double backward cannot give columns, once known

    def _split(self, g: torch.Tensor) -> list[torch.Tensor]:
        lay = self.ev.layout
        lead = tuple(g.shape[:-1])
        return [g[..., lay.offsets[k] : lay.offsets[k + 1]].reshape(lead + tuple(lay.shapes[k])).to(self.outs[k].dtype)
                for k in self.diff]

    def _vjp(self, g: torch.Tensor, batched: bool) -> tuple[torch.Tensor | None, ...]:
        """Gradients of all checked tensors for output cotangent(s) ``g``: (M,) or (B, M)."""
        try:
            with _quiet():
                if batched:
                    grads = _batched_grad([self.outs[k] for k in self.diff], self.leaves, self._split(g),
                                          self._use_func_vmap)
                else:
                    grads = torch.autograd.grad([self.outs[k] for k in self.diff], self.leaves, self._split(g),
                                                retain_graph=True, allow_unused=True)
        except Exception as e:
            if batched:
                if self._use_func_vmap:  # vmap cannot run this backward: autograd's own batching may
                    self._use_func_vmap = False
                    return self._vjp(g, batched)
                raise
            hint = ""
            if "inplace" in str(e) or "in-place" in str(e):
                hint = (
                    " fn modifies in place a tensor that autograd saved for the backward pass; "
                    "clone it first inside fn (x = x.clone()) and modify the clone."
                )
            raise GradcheckError(f"the backward of {self.ev.spec.name} raised {type(e).__name__}: {e}.{hint}") from e
        for i, gr in enumerate(grads):
            if gr is not None:
                self.unused[i] = False
        return grads

    def _zeros(self, i: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.float64, device=self.ev.bases[i].device)

    # -- rows -----------------------------------------------------------------------------------------
    def rows(self, rows: torch.Tensor, cols: list[torch.Tensor]) -> list[torch.Tensor]:
        """J[rows][:, cols[i]] for every checked tensor i, as float64 (R, len(cols[i]))."""
        M = self.ev.layout.size
        R = len(rows)
        J = [self._zeros(i, (R, len(c))) for i, c in enumerate(cols)]
        if not self.diff or R == 0:
            return J
        device = self.ev.y0.device
        rows = rows.to(device)
        size = max(1, CHUNK_ELEMENTS // max(1, M + sum(b.numel() for b in self.ev.bases)))

        every = [len(c) == b.numel() for c, b in zip(cols, self.ev.bases, strict=True)]  # no gather needed

        def fill(batched: bool) -> None:
            for s, e in _chunks(R, size if batched else 1):
                g = torch.zeros(e - s, M, dtype=torch.float64, device=device)
                g[torch.arange(e - s, device=device), rows[s:e]] = 1.0
                grads = self._vjp(g if batched else g[0], batched)
                for i, gr in enumerate(grads):
                    if gr is not None and len(cols[i]):
                        gr = gr.reshape(e - s, -1)
                        J[i][s:e] = gr if every[i] else gr[:, cols[i].to(gr.device)]

        if self.batched_ok is not False:
            try:
                fill(batched=True)
                self.batched_ok = True
            except Exception:
                self.batched_ok = False
        if self.batched_ok is False:
            fill(batched=False)
        elif not self._rows_agree(J, rows, cols):
            self.batched_ok = False  # batched backward disagreed with a plain one: trust the plain one
            fill(batched=False)
        return J

    def _rows_agree(self, J: list[torch.Tensor], rows: torch.Tensor, cols: list[torch.Tensor]) -> bool:
        """Check batched rows against a plain VJP with a random cotangent (and backward's determinism)."""
        v = torch.randn(len(rows), generator=self.gen, dtype=torch.float64).to(rows.device)
        g = torch.zeros(self.ev.layout.size, dtype=torch.float64, device=rows.device)
        g[rows] = v
        plain = self._vjp(g, batched=False)
        self._check_deterministic(g, plain)
        return all(_close(v.to(J[i].device) @ J[i], self._pick(plain[i], cols[i], i)) for i in range(len(cols)))

    def _check_deterministic(self, g: torch.Tensor, first: tuple[torch.Tensor | None, ...]) -> None:
        second = self._vjp(g, batched=False)
        for i, (a, b) in enumerate(zip(first, second, strict=True)):
            if a is None or b is None or not a.numel():
                continue
            d = float((a - b).abs().max())
            if d > 1e-10 * (1.0 + float(a.abs().max())):
                raise GradcheckError(
                    f"the backward of {self.ev.spec.name} is not deterministic: two identical backward "
                    f"passes gave gradients for '{self.ev.spec.checked[i].name}' that differ by {d:.3g}. "
                    "Make backward deterministic (torch.use_deterministic_algorithms(True), no atomics "
                    "or randomness in a custom backward)."
                )

    def _pick(self, g: torch.Tensor | None, cols: torch.Tensor, i: int) -> torch.Tensor:
        if g is None:
            return self._zeros(i, (len(cols),))
        return g.reshape(-1).to(torch.float64)[cols.to(g.device)]

    # -- columns --------------------------------------------------------------------------------------
    def columns(self, i: int, cols: torch.Tensor) -> torch.Tensor:
        """J[:, cols]ᵀ for tensor ``i`` as float64 (len(cols), M), by double backward.

        Raises NoColumns when the backward is not differentiable (``once_differentiable``,
        numpy inside) or its derivative disagrees with a plain backward pass.
        """
        M = self.ev.layout.size
        if not self.diff:
            return self._zeros(i, (len(cols), M))
        if self._no_columns:
            raise NoColumns(self._no_columns)
        try:
            return self._columns(i, cols)
        except NoColumns as e:
            self._no_columns = str(e) or "no double backward"  # do not try again for later chunks
            raise

    def _columns(self, i: int, cols: torch.Tensor) -> torch.Tensor:
        M = self.ev.layout.size
        if self._jtv is None:
            self._v = torch.randn(M, generator=self.gen, dtype=torch.float64).to(self.ev.y0.device).requires_grad_()
            try:
                with torch.enable_grad(), _quiet():
                    self._jtv = torch.autograd.grad([self.outs[k] for k in self.diff], self.leaves,
                                                    self._split(self._v), retain_graph=True, create_graph=True,
                                                    allow_unused=True)
            except Exception as e:
                raise NoColumns(str(e)) from e
            probe = torch.randn(M, generator=self.gen, dtype=torch.float64).to(self.ev.y0.device)
            plain = self._vjp(probe, batched=False)
            self._check_deterministic(probe, plain)
            self._probe = (probe, list(plain))
        g = self._jtv[i]
        if g is None:
            return self._zeros(i, (len(cols), M))
        self.unused[i] = False
        if not g.requires_grad:
            raise NoColumns("the backward is not differentiable")
        g = g.reshape(-1)
        b = len(cols)
        E = torch.zeros(b, g.numel(), dtype=g.dtype, device=g.device)
        E[torch.arange(b, device=g.device), cols.to(g.device)] = 1.0
        out = None
        for batched in ("vmap", "grads_batched", ""):
            try:
                with _quiet():
                    if batched:
                        (r,) = _batched_grad([g], [self._v], [E], batched == "vmap")
                        r = None if r is None else r.to(torch.float64)
                    else:
                        rs = [torch.autograd.grad(g, self._v, E[k], retain_graph=True, allow_unused=True)[0]
                              for k in range(b)]
                        r = None if rs[0] is None else torch.stack(rs).to(torch.float64)
            except Exception as e:
                if not batched:
                    raise NoColumns(str(e)) from e
                continue
            out = self._zeros(i, (b, M)) if r is None else r
            probe, plain = self._probe
            if _close(out @ probe.to(out.device), self._pick(plain[i], cols, i)):
                return out
        raise NoColumns("double backward disagrees with a plain backward pass")

    # -- projection -----------------------------------------------------------------------------------
    def project(self, v: torch.Tensor) -> list[torch.Tensor]:
        """vᵀJ for one output cotangent ``v`` (M,): one plain backward pass."""
        grads = self._vjp(v, batched=False) if self.diff else [None] * len(self.leaves)
        return [torch.zeros_like(b) if gr is None else gr.to(torch.float64) for gr, b in zip(grads, self.ev.bases, strict=True)]


def _batched_grad(outputs: list[torch.Tensor], inputs: list[torch.Tensor], grads: list[torch.Tensor],
                  func_vmap: bool) -> tuple[torch.Tensor | None, ...]:
    """``torch.autograd.grad`` for a batch of cotangents (leading dim of each of ``grads``).

    ``func_vmap``: through ``torch.func.vmap`` (the graph is kept); else autograd's
    ``is_grads_batched``, whose older batching loops over many backward kernels.
    """
    if not func_vmap:
        return torch.autograd.grad(outputs, inputs, grads, retain_graph=True, allow_unused=True,
                                   is_grads_batched=True)
    unused: list[bool] = []

    def vjp(*gs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = torch.autograd.grad(outputs, inputs, gs, retain_graph=True, allow_unused=True)
        unused[:] = [o is None for o in out]  # vmap returns tensors only: mark the missing ones
        return tuple(torch.zeros((), dtype=x.dtype, device=x.device) if o is None else o
                     for o, x in zip(out, inputs, strict=True))

    res = torch.func.vmap(vjp)(*grads)
    return tuple(None if u else r for u, r in zip(unused, res, strict=True))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not a.numel():
        return True
    scale = 1.0 + float(b.abs().max())
    return bool(torch.allclose(a.to(b.device), b, rtol=1e-6, atol=1e-9 * scale))


def numeric_chunks(ev: Evaluator, i: int, cols: torch.Tensor, rows: torch.Tensor | None,
                   eps: float) -> Iterator[tuple[int, int, np.ndarray]]:
    """Central differences (f(x + eps e_j) - f(x - eps e_j)) / 2 eps, chunk by chunk.

    Yields ``(start, end, block)`` with block a float64 array (end - start, R) for
    ``cols[start:end]`` of checked tensor ``i``. Each chunk writes its 2b perturbed points
    (b elements, plus and minus) into one reused buffer and evaluates them in one
    batched call. On the CPU the buffer work is done through numpy, single-threaded, for
    the reason given in compare.Accumulator.add.
    """
    base = ev.bases[i]
    n, shape = base.numel(), base.shape
    size = chunk_size(ev, i)
    cpu = base.device.type == "cpu"
    # One buffer of points for all chunks. Refilling it is a full pass over 2b copies of the
    # input, so after each chunk only the perturbed entries are put back, unless fn wrote to
    # its inputs (seen on the version counter), in which case the next chunk refills.
    buf = torch.empty(2 * min(size, max(len(cols), 1)), n, dtype=torch.float64, device=base.device)
    flat = base.reshape(1, n)
    if cpu:
        buf_, flat_, cols_ = buf.numpy(), flat.numpy(), cols.numpy()
    else:
        buf_, flat_, cols_ = buf, flat, cols.to(base.device)
    clean = False
    for s, e in _chunks(len(cols), size):
        # no_grad only around the work, never across the yield: a suspended generator
        # would otherwise leave grad mode off in the caller.
        with torch.no_grad():
            b = e - s
            if not clean:
                buf_[:] = flat_
            c = cols_[s:e]
            ar = np.arange(b) if cpu else torch.arange(b, device=base.device)
            buf_[ar, c] += eps
            buf_[ar + b, c] -= eps
            version = buf._version
            y = ev.batched({i: buf[: 2 * b].reshape(2 * b, *shape)}, rows)
            clean = buf._version == version
            if clean:
                buf_[ar, c] = flat_[0, c]
                buf_[ar + b, c] = flat_[0, c]
            y = y.detach().to("cpu", torch.float64).numpy()
            block = np.subtract(y[:b], y[b:])
            block *= 1.0 / (2 * eps)
        yield s, e, block
