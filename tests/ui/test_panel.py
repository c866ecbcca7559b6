"""The Gradients panel in a real JupyterLab and Chromium, fed by a real gs.watch() loop.

One scenario, in the order a user meets it: the panel before gradsight is imported, live
updates while the training cell is still running, layer detail and the in-model gradcheck,
a kernel restart, and a second watched model with findings (with severity, op and
file:line). Screenshots: test-artifacts/ui/*.png.
"""

from __future__ import annotations

import re
import time

from playwright.sync_api import Page, expect

PANEL = "#gradsight-panel"
KERNEL = "window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel"
KERNEL_IDLE = f"() => {KERNEL}?.status === 'idle'"

RUN_CELL = """async ([i, wait]) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget;
  nb.content.activeCellIndex = i;
  const done = app.commands.execute('notebook:run-cell');
  if (wait) { await done; }
}"""

CELL_DONE = (
    """(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].model.executionState !== 'running'"""
)

CELL_OUTPUT = """(i) => window.jupyterapp.shell.currentWidget.content.widgets[i].node
  .querySelector('.jp-OutputArea')?.innerText ?? ''"""

APPEND_AND_RUN = """async (code) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget;
  nb.content.activeCellIndex = nb.content.widgets.length - 1;
  await app.commands.execute('notebook:insert-cell-below');
  nb.content.activeCell.model.sharedModel.setSource(code);
  await app.commands.execute('notebook:run-cell');
  return nb.content.widgets.length - 1;
}"""

FAKE_WATCHER = """from gradsight.comm.testing import FakeWatcher
from gradsight import bus as registry
fw = FakeWatcher("Diverging", layers=("embed", "block.0.attn", "head"))
fw.advance(12)
fw.add_finding(step=11, last_step=11, count=1, layer="block.0.attn", kind="nan_origin", severity="error",
               message="first NaN: backward of aten::log in block.0.attn", hint="clamp the input of torch.log",
               phase="backward", op="aten::log", source="train.py:42", value=float("nan"))
fw.add_finding(step=4, last_step=11, count=8, layer="embed", kind="vanishing_gradient", severity="warning",
               message="gradient/weight ratio of embed is 3e-07 of the largest", value=3e-7, threshold=1e-4)
registry.add(fw)"""

# cell indices in examples/00_panel_demo.ipynb
SETUP, TRAIN, GRADCHECK = 1, 2, 4


def _step(page: Page) -> int:
    text = page.locator(f"{PANEL} .jp-gradsight-step").inner_text()
    m = re.search(r"step (\d+)", text)
    assert m, f"no step in the status line: {text!r}"
    return int(m.group(1))


def _state(page: Page, state: str, timeout: float = 60_000) -> None:
    expect(page.locator(f"{PANEL} .jp-gradsight-state")).to_have_attribute(
        "data-state", state, timeout=timeout
    )


def _shot(page: Page, artifacts, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}.png"))


PROBE = """(cell) => {
  const q = s => document.querySelector('#gradsight-panel ' + s);
  const hash = c => { const d = c ? c.toDataURL() : ''; let x = 0; for (let i = 0; i < d.length; i++) { x = (x * 31 + d.charCodeAt(i)) | 0; } return x; };
  const m = /step (\\d+)/.exec(q('.jp-gradsight-step')?.textContent ?? '');
  return {
    step: m ? Number(m[1]) : -1,
    hist: q('.jp-gradsight-hist-note')?.textContent ?? '',
    flowPixels: hash(q('.jp-gradsight-flow-chart canvas')),
    histPixels: hash(q('.jp-gradsight-hist-chart canvas')),
    findings: document.querySelectorAll('#gradsight-panel .jp-gradsight-finding').length,
    running: window.jupyterapp.shell.currentWidget.content.widgets[cell].model.executionState === 'running'
  };
}"""


def _watch_training(page: Page, whole_run: bool, shot=None) -> dict:
    """While the training cell runs: the step, the histogram and the flow chart must move.

    Reads the panel in one synchronous evaluate per poll (the views re-render several times
    a second, so element handles go stale between separate calls). With `whole_run`, polls
    until the cell ends and reports whether findings appeared while it was still running.
    """
    page.wait_for_function(
        f"() => {{ const p = ({PROBE})({TRAIN}); return p.step >= 3 && p.hist.includes('steps'); }}"
    )
    first = page.evaluate(PROBE, TRAIN)
    assert first["running"], f"the training cell ended before the panel showed step 3: {first}"
    last = first
    findings_seen = first["findings"] > 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.4)
        now = page.evaluate(PROBE, TRAIN)
        if not now["running"]:
            break
        last = now
        if shot and not findings_seen and now["findings"] > 0:
            shot()  # the first findings, while the cell is still running
        findings_seen = findings_seen or now["findings"] > 0
        if not whole_run and last["step"] >= first["step"] + 3 and last["hist"] != first["hist"]:
            break
    changed = f"{first} -> {last}"
    assert last["step"] >= first["step"] + 3, f"step did not advance while the cell ran: {changed}"
    assert last["hist"] != first["hist"], f"the histogram did not change while the cell ran: {changed}"
    assert last["histPixels"] != first["histPixels"], "the histogram canvas did not redraw while the cell ran"
    assert last["flowPixels"] != first["flowPixels"], (
        "the gradient flow chart did not redraw while the cell ran"
    )
    return {"findings_seen": findings_seen}


def test_panel_follows_a_training_run_and_a_restart(page: Page, lab, artifacts):
    t0 = time.monotonic()
    page.goto(f"{lab.url}/lab/tree/demo.ipynb?token={lab.token}&reset")
    page.wait_for_function(KERNEL_IDLE)
    page.locator('.jp-SideBar.jp-mod-right .lm-TabBar-tab[data-id="gradsight-panel"]').click()
    panel = page.locator(PANEL)
    expect(panel).to_be_visible()

    # 1. before `import gradsight`: the panel says what to do
    _state(page, "not-loaded")
    expect(panel.locator(".jp-gradsight-advice")).to_contain_text("import gradsight")
    _shot(page, artifacts, "01-not-loaded")

    # 2. import + gs.watch(model): connected, the model is listed, empty states explain
    page.evaluate(RUN_CELL, [SETUP, True])
    _state(page, "connected")
    expect(panel.locator(".jp-gradsight-watcher-name")).to_have_text("Sequential")
    expect(panel.locator(".jp-gradsight-flow .jp-gradsight-empty")).to_contain_text("No training step yet")

    # 3. live while the training cell runs
    page.evaluate(RUN_CELL, [TRAIN, False])
    live = _watch_training(page, whole_run=True, shot=lambda: _shot(page, artifacts, "02-training"))
    page.wait_for_function(CELL_DONE, arg=TRAIN, timeout=120_000)
    _shot(page, artifacts, "03-after-training")
    out = page.evaluate(CELL_OUTPUT, TRAIN)
    m = re.search(r"(\d+) steps, loss [\d.]+, (\d+) finding", out)
    assert m, f"unexpected training output: {out!r}"
    steps, n_findings = int(m.group(1)), int(m.group(2))
    expect(panel.locator(".jp-gradsight-step")).to_contain_text(f"step {steps}")  # the final push arrived
    if n_findings:
        expect(panel.locator(".jp-gradsight-findings .jp-gradsight-section-title")).to_have_text(
            f"Findings ({n_findings})"
        )
        assert live["findings_seen"], "findings only appeared after the training cell ended"
    else:  # the detectors found nothing in this run: the panel must say so, not stay blank
        expect(panel.locator(".jp-gradsight-findings .jp-gradsight-empty")).to_contain_text("No findings")

    # 4. pick a layer, look at its weight histogram, run its gradcheck while idle
    panel.locator(".jp-gradsight-layer-select").select_option("2")
    expect(panel.locator(".jp-gradsight-layer .jp-gradsight-section-title")).to_have_text("Layer 2 (Linear)")
    panel.locator('.jp-gradsight-tab[data-kind="weight"]').click()
    expect(panel.locator(".jp-gradsight-hist-note")).to_contain_text("steps")
    panel.locator('.jp-gradsight-tab[data-kind="grad"]').click()
    button = panel.locator(".jp-gradsight-gradcheck button")
    expect(button).to_have_text("Run gradcheck on 2")
    expect(button).to_be_enabled()
    button.click()
    report = panel.locator(".jp-gradsight-report").first
    expect(report).to_contain_text("2 (Linear)", timeout=60_000)
    expect(report.locator(".jp-gradsight-pill")).to_have_text("pass")
    expect(report.locator(".jp-gradsight-tensor")).to_have_count(3)  # input, weight, bias
    panel.locator(".jp-gradsight-gradcheck").scroll_into_view_if_needed()
    _shot(page, artifacts, "04-layer-and-gradcheck")

    # 5. restart: the panel says so, then recovers when the notebook runs again
    page.evaluate(f"() => {KERNEL}.restart()")
    _state(page, "not-loaded")
    expect(panel.locator(".jp-gradsight-advice")).to_contain_text("import gradsight")
    _shot(page, artifacts, "05-after-restart")
    page.evaluate(RUN_CELL, [SETUP, True])
    _state(page, "connected")
    page.evaluate(RUN_CELL, [TRAIN, False])
    _watch_training(page, whole_run=False)
    _shot(page, artifacts, "06-training-after-restart")
    page.evaluate(f"() => {KERNEL}.interrupt()")
    page.wait_for_function(CELL_DONE, arg=TRAIN)

    # 6. a second watched model with findings: the picker, severity colours, op and file:line
    page.evaluate(APPEND_AND_RUN, FAKE_WATCHER)
    select = panel.locator(".jp-gradsight-watcher-select")
    expect(select).to_be_visible()
    select.select_option("Diverging")
    rows = panel.locator(".jp-gradsight-finding")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_have_class(re.compile("jp-gradsight-sev-error"))
    expect(rows.nth(0).locator(".jp-gradsight-where")).to_have_text("aten::log at train.py:42")
    expect(rows.nth(1).locator(".jp-gradsight-pill")).to_have_text("warning")
    expect(panel.locator(".jp-gradsight-layer .jp-gradsight-section-title")).to_have_text(
        "Layer block.0.attn (ReLU)"
    )  # the first flagged layer is shown by default
    panel.locator(".jp-gradsight-findings").scroll_into_view_if_needed()
    _shot(page, artifacts, "07-findings")

    # the comm's log lines go to the server log, never into the user's cells
    outputs = "\n".join(page.locator(".jp-OutputArea").all_inner_texts())
    assert "[gradsight.comm]" not in outputs, outputs
    assert time.monotonic() - t0 < 100, "the browser scenario is getting slow"
