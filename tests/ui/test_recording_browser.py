"""A recording written by a training script in another process, opened from JupyterLab's file
browser (right-click its manifest.json: "Open With → Gradients", next to "Open in Gradients
panel"), shows in the panel's source
selector and its step count rises while the script trains — with the kernel idle and while a
cell runs. Screenshot: test-artifacts/ui/recording-live.png.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from playwright.sync_api import Page, expect

ROOT = Path(__file__).resolve().parents[2]
PANEL = "#gradsight-panel"
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
SCRIPT = """import os, sys, time, torch, gradsight as gs
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
w = gs.watch(model, optimizer=opt, name="script", histogram_every=2,
             record=gs.RecordTo(sys.argv[1], flush_steps=1, flush_seconds=0.1))
stop = sys.argv[1] + ".stop"   # the test creates it once it has seen enough: no race with a slow machine
step = 0
while step < int(sys.argv[2]) and not os.path.exists(stop):
    x = torch.randn(16, 8)
    loss = (model(x) - x[:, :1]).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step(); w.step(loss=loss)
    step += 1
    time.sleep(0.2)   # slow on purpose: the panel follows the run while it trains
w.close()
print(step)
"""
MAX_STEPS = 1500  # a bound only: the test stops the script through the stop file


def _step(page: Page) -> int:
    text = page.locator(f"{PANEL} .jp-gradsight-step").inner_text()
    m = re.search(r"step (\d+)", text)
    return int(m.group(1)) if m else -1


def _rises(page: Page, what: str, seconds: float = 20.0) -> tuple[int, int]:
    first = _step(page)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = _step(page)
        if now >= first + 3:
            return first, now
    raise AssertionError(f"the recording's step stayed at {first} -> {_step(page)} ({what})")


def test_panel_follows_a_recording_written_by_a_script(page: Page, lab, artifacts):
    (lab.root / "nbs").mkdir(exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("import gradsight as gs"),
                nbformat.v4.new_code_cell("import time\ntime.sleep(10)")]
    nbformat.write(nb, lab.root / "nbs" / "recording.ipynb")
    run = lab.root / "runs" / "script1"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(run), str(MAX_STEPS)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        page.goto(f"{lab.url}/lab/tree/nbs/recording.ipynb?token={lab.token}&reset")
        page.wait_for_function(KERNEL_IDLE)
        page.evaluate(RUN_CELL, [0, True])
        page.wait_for_function(KERNEL_IDLE)
        page.locator('.jp-SideBar.jp-mod-right .lm-TabBar-tab[data-id="gradsight-panel"]').click()
        expect(page.locator(f"{PANEL} .jp-gradsight-state")).to_have_attribute("data-state", "connected",
                                                                                   timeout=60_000)
        deadline = time.monotonic() + 60
        while not (run / "manifest.json").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the script never started recording"
            time.sleep(0.1)

        # the file browser knows the manifest as a gradsight recording, with our command on it
        page.evaluate("() => window.jupyterapp.commands.execute('filebrowser:go-to-path', {path: 'runs/script1/'})")
        item = page.locator('.jp-DirListing-item[data-file-type="gradsight-recording"]')
        expect(item).to_have_count(1, timeout=30_000)
        item.click(button="right")
        expect(page.locator(".lm-Menu-item", has_text="Open in Gradients panel")).to_be_visible()
        page.locator(".lm-Menu-item", has_text="Open With").hover()  # Open With → Gradients
        page.locator(".lm-Menu-item", has_text=re.compile(r"^Gradients$")).click()

        panel = page.locator(PANEL)
        select = panel.locator(".jp-gradsight-watcher-select, .jp-gradsight-watcher-name").first
        expect(select).to_contain_text("script [script1] (recording, live", timeout=30_000)
        expect(page.locator(".jp-gradsight-recording-opener")).to_have_count(0)  # its tab closed itself
        assert proc.poll() is None, "the script finished before the panel showed its recording"
        idle = _rises(page, "kernel idle")
        page.evaluate(RUN_CELL, [1, False])  # a cell runs: the kernel still pushes the recording's steps
        page.wait_for_function(
            "() => window.jupyterapp.shell.currentWidget.content.widgets[1].model.executionState === 'running'"
        )
        busy = _rises(page, "kernel busy")
        page.screenshot(path=str(artifacts / "recording-live.png"))
        Path(f"{run}.stop").touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        steps = int(out.split()[-1])
        expect(panel.locator(".jp-gradsight-step")).to_contain_text(re.compile(rf"step {steps}\b"), timeout=30_000)
        expect(select).not_to_contain_text("live", timeout=30_000)
        page.screenshot(path=str(artifacts / "recording-finished.png"))
        print(f"steps seen while idle {idle}, while a cell ran {busy}")
    finally:
        proc.kill()
        proc.wait()
