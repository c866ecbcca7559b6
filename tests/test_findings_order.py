"""One order of findings everywhere (issue 9): ``w.findings()`` sorts by first step, then
severity (error, warning, info), then layer in model order; the HTML summary keeps it."""

import re

import pandas as pd
import torch
from torch import nn

import gradsight as gs
from gradsight.detectors.finding import FINDING_COLUMNS

ROWS = [  # (step, severity, layer), as a detector log might hold them
    (5, "info", "2"), (5, "error", "1"), (1, "warning", "2"), (5, "error", "0"), (5, "warning", ""),
]
EXPECTED = [(1, "warning", "2"), (5, "error", "0"), (5, "error", "1"), (5, "warning", ""), (5, "info", "2")]


def _frame(all=False):  # noqa: A002 - the engine's frame(all=...)
    rows = [{c: "" for c in FINDING_COLUMNS} | {"step": s, "last_step": s, "count": 1, "severity": sev, "layer": layer,
                                               "kind": f"k{i}", "message": f"m{i}", "value": 0.0, "threshold": 0.0}
            for i, (s, sev, layer) in enumerate(ROWS)]
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


def test_findings_are_ordered_by_step_then_severity_then_layer(monkeypatch):
    w = gs.watch(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)))
    monkeypatch.setattr(w._detectors, "frame", _frame)  # the order is the watcher's, not the log's
    got = list(w.findings()[["step", "severity", "layer"]].itertuples(index=False, name=None))
    assert got == EXPECTED
    assert list(w.findings().index) == list(range(len(ROWS)))
    w.close()


def test_the_html_summary_keeps_the_findings_order(monkeypatch):
    from gradsight import widgets as gw

    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    w = gs.watch(model)
    model(torch.randn(3, 2)).sum().backward()
    w.step()
    monkeypatch.setattr(w._detectors, "frame", _frame)
    kinds = [f"k{ROWS.index(r)}" for r in EXPECTED]
    for page in (gw.watcher_html(w), gw.findings_html(w.findings())):
        shown = re.findall(r"<b>(k\d)</b>", page)
        assert shown == kinds, page
    w.close()
