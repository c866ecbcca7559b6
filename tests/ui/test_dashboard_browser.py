"""The ipywidgets dashboard updates live in a real JupyterLab + Chromium while training runs.

Reuses the session's JupyterLab server and Chromium from tests/ui/conftest.py (owned by
the panel's tests). A notebook shows ``w.dashboard()`` in one cell and trains in the
next with small sleeps; while that cell is still running, the dashboard's step counter
and its gradient-flow image must change. Screenshots: test-artifacts/ui/dashboard-*.png.
"""

from __future__ import annotations

import time

import nbformat
from playwright.sync_api import Page, expect

KERNEL_IDLE = (
    "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'"
)
RUN_CELL = """async ([i, wait]) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget;
  nb.content.activeCellIndex = i;
  const done = app.commands.execute('notebook:run-cell');
  if (wait) { await done; }
}"""
PROBE = """(cell) => {
  const d = document.querySelector('.jp-gradsight-dashboard');
  const img = d ? [...d.querySelectorAll('img')].find(i => i.offsetParent !== null) : null;
  const step = d?.querySelector('.jp-gradsight-dashboard-step')?.textContent ?? '';
  return {
    step: step === '' ? -1 : Number(step),
    src: img ? img.src : '',
    width: img ? img.naturalWidth : 0,
    running: window.jupyterapp.shell.currentWidget.content.widgets[cell].model.executionState === 'running'
  };
}"""

SETUP = """import time
import torch
from torch import nn
import gradsight as gs

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
with torch.no_grad():
    model[2].bias[:40] = -8.0   # planted: 40 of 64 units of the ReLU '3' never fire
opt = torch.optim.SGD(model.parameters(), lr=0.05)
w = gs.watch(model, optimizer=opt, histogram_every=2)
x, y = torch.randn(128, 16), torch.randn(128, 1)
dash = w.dashboard()
dash"""

TRAIN = """STEPS = 40
for step in range(STEPS):
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    w.step(loss)
    time.sleep(0.15)   # slow on purpose: the dashboard redraws while this cell runs
print("trained", w.step_count, "steps;", dash.redraws, "live redraws")"""


def _notebook(path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(TRAIN)]
    nbformat.write(nb, path)


def test_dashboard_updates_live_while_the_cell_runs(page: Page, lab, artifacts):
    t0 = time.monotonic()
    _notebook(lab.root / "dashboard_live.ipynb")
    page.goto(f"{lab.url}/lab/tree/dashboard_live.ipynb?token={lab.token}&reset")
    page.wait_for_function(KERNEL_IDLE)

    page.evaluate(RUN_CELL, [0, True])
    dashboard = page.locator(".jp-gradsight-dashboard")
    expect(dashboard).to_be_visible()
    expect(dashboard.locator(".jp-gradsight-dashboard-step")).to_have_text("0")
    expect(dashboard.get_by_role("tab", name="Gradient flow")).to_be_visible()
    page.wait_for_function(f"() => ({PROBE})(1).width > 100")  # the empty-state figure is drawn
    before = page.evaluate(PROBE, 1)

    page.evaluate(RUN_CELL, [1, False])
    page.wait_for_function(f"() => {{ const p = ({PROBE})(1); return p.running && p.step >= 3; }}")
    samples = [page.evaluate(PROBE, 1)]
    shot_taken = False
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = page.evaluate(PROBE, 1)
        if not now["running"]:
            break
        samples.append(now)
        if not shot_taken and len({s["src"] for s in samples}) >= 3:
            page.screenshot(path=str(artifacts / "dashboard-live-while-training.png"))
            shot_taken = True
    running = [s for s in samples if s["running"]]
    steps = [s["step"] for s in running]
    images = {s["src"] for s in running} - {before["src"]}
    assert steps == sorted(steps) and steps[-1] > steps[0], f"the step did not advance while running: {steps}"
    assert len(images) >= 2, f"the dashboard image changed {len(images)} time(s) while the cell ran"
    if not shot_taken:
        page.screenshot(path=str(artifacts / "dashboard-live-while-training.png"))

    # the cell finished: the last throttled redraw catches up to the final step
    page.wait_for_function(f"() => !({PROBE})(1).running")
    expect(dashboard.locator(".jp-gradsight-dashboard-step")).to_have_text("40", timeout=20_000)
    expect(page.locator(".jp-OutputArea-output").filter(has_text="trained 40 steps")).to_be_visible()
    # the detectors' finding is listed on top; choosing it selects its layer
    finding = dashboard.locator(".jp-gradsight-findings option").filter(has_text="dead_units")
    expect(finding).to_have_count(1)
    dashboard.locator(".jp-gradsight-findings select").select_option(label=finding.inner_text())
    expect(dashboard.locator(".widget-dropdown select").first).to_have_value("3")

    # tabs and controls work in the browser too: the histograms tab draws its two views
    dashboard.get_by_role("tab", name="Histograms").click()
    expect(dashboard.locator(".widget-tab-contents img:visible")).to_have_count(2, timeout=20_000)
    page.wait_for_function("""() => [...document.querySelectorAll('.jp-gradsight-dashboard .widget-tab-contents img')]
        .filter(i => i.offsetParent !== null).every(i => i.naturalWidth > 100)""", timeout=30_000)
    page.screenshot(path=str(artifacts / "dashboard-histograms-tab.png"))
    dashboard.get_by_role("tab", name="Dead units").click()
    page.wait_for_function("""() => [...document.querySelectorAll('.jp-gradsight-dashboard .widget-tab-contents img')]
        .filter(i => i.offsetParent !== null).every(i => i.naturalWidth > 100)""", timeout=30_000)
    page.screenshot(path=str(artifacts / "dashboard-dead-units-tab.png"))
    assert time.monotonic() - t0 < 60
