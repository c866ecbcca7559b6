"""The structured answer of a gradient check: one row per checked tensor.

A report reads as a table in a notebook, converts to a pandas frame and to JSON for the
JupyterLab panel, and plots the worst tensor. It holds only summaries and a bounded
sample of Jacobian entries, never whole Jacobians, so keeping recent reports is cheap.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .outputs import OutputInfo

FRAME_COLUMNS = ["name", "shape", "passed", "max_abs_err", "max_rel_err", "worst_index", "output", "analytic",
                 "numeric"]
OUTPUT_COLUMNS = ["name", "kind", "compared", "dtype", "shape"]



@dataclass
class PlotData:
    """Bounded samples behind report.plot() (not part of to_dict)."""

    sample_analytic: np.ndarray
    sample_numeric: np.ndarray
    element_err: np.ndarray  # max |analytic - numeric| over outputs, per compared input element
    element_bad: np.ndarray
    element_index: np.ndarray  # flat index of each compared input element
    complete: bool  # every element of the tensor was compared


@dataclass
class TensorCheck:
    """The verdict for one checked tensor.

    In full mode the numbers describe the worst Jacobian entry: ``worst_index`` is the
    element of this tensor, ``worst_output`` the output element, ``analytic`` and
    ``numeric`` the two derivatives there. In fast mode a passing row holds the
    projection vᵀJu instead (``worst_index`` is None); a failing one is re-checked
    element-wise and reads like a full-mode row. ``output`` names the output tensor of the
    worst entry (for a projection, the compared outputs).
    """

    name: str
    kind: str  # "input" | "parameter"
    shape: tuple[int, ...]
    dtype: str
    passed: bool
    max_abs_err: float
    max_rel_err: float
    worst_index: tuple[int, ...] | None
    worst_output: str | None
    analytic: float
    numeric: float
    method: str  # how it was checked, e.g. "all 4096 elements", "projection vᵀJu"
    note: str = ""
    output: str | None = None
    excess: float = field(default=0.0, repr=False)  # worst error / its tolerance; above 1 fails
    plot_data: PlotData | None = field(default=None, repr=False, compare=False)

    def where(self) -> str:
        if self.worst_index is None:
            return "vᵀJu" if self.method.startswith("projection") else "—"
        idx = ", ".join(str(i) for i in self.worst_index)
        return f"∂{self.worst_output} / ∂{self.name}[{idx}]"


def _num(x: Any) -> Any:
    """Python scalars for JSON: numpy numbers to float/int; NaN and infinities to None."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class GradcheckReport:
    """Result of :func:`gradsight.gradcheck`; ``bool(report)`` is ``report.passed``."""

    fn: str
    mode: str
    eps: float
    atol: float
    rtol: float
    seed: int
    rows: list[TensorCheck]
    samples: int | None = None
    notes: list[str] = field(default_factory=list)
    batched: bool = False  # numeric evaluations ran through torch.func.vmap
    seconds: float = 0.0
    layer: str | None = None  # in-model checks: the layer's qualified name in the model
    step: int | None = None  # in-model checks: the training step whose inputs were used
    outputs: list[OutputInfo] = field(default_factory=list)  # every output of fn, with its kind

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failed(self) -> list[str]:
        """Names of the tensors whose gradient is wrong."""
        return [r.name for r in self.rows if not r.passed]

    def worst(self) -> TensorCheck:
        """The row to look at first: a failing one with the largest error, else the largest error."""
        return max(self.rows, key=lambda r: (not r.passed, r.excess))

    def to_frame(self) -> pd.DataFrame:
        """One row per checked tensor: inputs first, in order, then module parameters.

        ``worst_index`` and ``output`` locate the worst entry: the element of the tensor and
        the output it was compared on (``outputs_frame()`` says which outputs were compared).
        """
        return pd.DataFrame(
            [
                {
                    "name": r.name, "shape": r.shape, "passed": r.passed, "max_abs_err": r.max_abs_err,
                    "max_rel_err": r.max_rel_err, "worst_index": r.worst_index, "output": r.output,
                    "analytic": r.analytic, "numeric": r.numeric,
                }
                for r in self.rows
            ],
            columns=FRAME_COLUMNS,
        )

    def output_notes(self) -> list[str]:
        """A line on the outputs that were not compared, and why (empty when all were)."""
        skipped = [o for o in self.outputs if not o.compared]
        if not skipped:
            return []
        compared = ", ".join(o.name for o in self.outputs if o.compared)
        return [f"compared {compared}; not compared: "
                + "; ".join(f"{o.name} ({o.kind})" for o in skipped)
                + " (torch.autograd.gradcheck's rule: only outputs that require grad have a gradient to check)"]

    def outputs_frame(self) -> pd.DataFrame:
        """One row per output of fn: its kind and whether its Jacobian was compared.

        Only differentiable outputs are compared (torch.autograd.gradcheck's rule); if none
        is, all floating-point ones are, and their numeric derivative must then be zero.
        """
        return pd.DataFrame([o.to_dict() for o in self.outputs], columns=OUTPUT_COLUMNS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no Jacobians): for the panel protocol and for saving.

        Non-finite numbers become None, since JSON has no NaN.
        """
        return {
            "passed": self.passed, "fn": self.fn, "mode": self.mode, "eps": _num(self.eps),
            "atol": _num(self.atol), "rtol": _num(self.rtol), "seed": int(self.seed),
            "samples": self.samples, "batched": self.batched, "seconds": _num(self.seconds),
            "layer": self.layer, "step": None if self.step is None else int(self.step),
            "notes": list(self.notes), "outputs": [o.to_dict() for o in self.outputs],
            "rows": [
                {
                    "name": r.name, "kind": r.kind, "shape": [int(s) for s in r.shape], "dtype": r.dtype,
                    "passed": bool(r.passed), "max_abs_err": _num(r.max_abs_err),
                    "max_rel_err": _num(r.max_rel_err),
                    "worst_index": None if r.worst_index is None else [int(i) for i in r.worst_index],
                    "worst_output": r.worst_output, "analytic": _num(r.analytic), "numeric": _num(r.numeric),
                    "method": r.method, "note": r.note, "output": r.output,
                }
                for r in self.rows
            ],
        }

    def plot(self, tensor: str | None = None, *, ax=None, fig=None):
        """Analytic vs numeric for the worst tensor (or ``tensor``), and the error per element.

        Returns a matplotlib Figure; pass ``fig`` or two axes as ``ax`` to draw into yours.
        """
        from ..widgets.gradcheck_plot import plot_report  # the view loads matplotlib on first use

        return plot_report(self, tensor=tensor, ax=ax, fig=fig)

    def __repr__(self) -> str:
        parts = []
        for r in self.rows:
            if r.passed:
                parts.append(f"{r.name} ok")
            else:
                at = "" if r.worst_index is None else f" at {r.where()}"
                parts.append(f"{r.name} FAIL (max abs err {r.max_abs_err:.3g}{at})")
        verdict = "passed" if self.passed else "FAILED"
        return f"GradcheckReport({verdict}, {self.fn}, mode={self.mode!r}: {', '.join(parts)})"

    def _repr_html_(self) -> str:
        from ..widgets.style import FAIL_COLOR, PASS_COLOR  # one palette for every view (no matplotlib)

        esc = html.escape
        verdict = (
            f'<span style="color:{PASS_COLOR};font-weight:bold">✓ passed</span>' if self.passed
            else f'<span style="color:{FAIL_COLOR};font-weight:bold">✗ FAILED</span> '
                 f"({esc(', '.join(self.failed))})"
        )
        where = ""
        if self.layer is not None:
            where = f" in the model as <code>{esc(self.layer)}</code>"
            where += f", on the inputs of step {self.step}" if self.step is not None else ""
        head = (
            f"<div><b>gradcheck</b> of <code>{esc(self.fn)}</code>{where}: {verdict}"
            f' <span style="opacity:0.7">— mode {esc(self.mode)}, eps {self.eps:g}, atol {self.atol:g}, '
            f"rtol {self.rtol:g}, seed {self.seed}, {self.seconds:.2f} s</span></div>"
        )
        cells = ["tensor", "shape", "verdict", "max abs err", "max rel err", "worst mismatch",
                 "analytic", "numeric", "checked"]
        pad = "text-align:left;padding:2px 12px 2px 0;vertical-align:top"
        th = "".join(f'<th style="{pad};white-space:nowrap">{c}</th>' for c in cells)
        body = []
        for r in self.rows:
            mark = (f'<span style="color:{PASS_COLOR};white-space:nowrap">✓ pass</span>' if r.passed
                    else f'<span style="color:{FAIL_COLOR};font-weight:bold;white-space:nowrap">✗ FAIL</span>')
            vals = [
                f"<code>{esc(r.name)}</code>", esc(str(tuple(r.shape))), mark, f"{r.max_abs_err:.3g}",
                f"{r.max_rel_err:.3g}", f'<code style="white-space:nowrap">{esc(r.where())}</code>',
                f"{r.analytic:.6g}", f"{r.numeric:.6g}", esc(r.method + (f" — {r.note}" if r.note else "")),
            ]
            body.append("<tr>" + "".join(f'<td style="{pad}">{v}</td>' for v in vals) + "</tr>")
        notes = "".join(f"<li>{esc(n)}</li>" for n in self.notes + self.output_notes())
        notes = f'<ul style="margin:4px 0">{notes}</ul>' if notes else ""
        return f'{head}<table class="jp-gradsight-gradcheck"><thead><tr>{th}</tr></thead>' \
               f"<tbody>{''.join(body)}</tbody></table>{notes}"
