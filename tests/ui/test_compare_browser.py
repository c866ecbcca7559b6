"""Compare two runs in the panel: two recordings written by a script in another process (a
baseline, and a deeper run with a larger learning rate that meets a NaN batch, whose optimizer
step on_nonfinite="skip" skips, so it trains on), opened in the notebook
with gs.open(); the panel's "Compare with" selector picks the second, and the compare section
shows both runs: labelled legend, loss of both on one chart, per-layer gradient norms of A and B
as bars in their two colours on one log axis (the layers only B has named as missing in A), and
the findings side by side with what only B found marked. Screenshot: test-artifacts/ui/compare.png.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
from lab_page import KERNEL_IDLE, PANEL, RUN_CELL, open_panel, widen_sidebar
from playwright.sync_api import Page, expect

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """import sys, torch, gradsight as gs
from torch import nn

def run(name, path, widths, lr, nan_at=None, steps=30):
    torch.manual_seed(0)
    mods = []
    for i, o in zip(widths[:-1], widths[1:]):
        mods += [nn.Linear(i, o), nn.Tanh()]
    model = nn.Sequential(*mods[:-1])
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    w = gs.watch(model, optimizer=opt, name=name, record=path, on_nonfinite="skip")
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(16, widths[0], generator=gen)
        if step == nan_at:
            x[0, 0] = float("nan")
        loss = (model(x) - x[:, :1]).pow(2).mean()
        opt.zero_grad(); loss.backward(); opt.step(); w.step(loss=loss)
    w.close()

run("baseline", sys.argv[1] + "/cmp_a", (8, 32, 32, 1), lr=0.05)
run("deeper", sys.argv[1] + "/cmp_b", (8, 32, 32, 32, 1), lr=0.2, nan_at=12)
"""

# pixels of the two runs' bar colours (widgets/style.py BLUE, ORANGE at the bars' 0.8 alpha)
COLOUR_PIXELS = """(sel) => {
  const c = document.querySelector(sel);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const near = (i, r, g, b) => Math.abs(d[i] - r) < 12 && Math.abs(d[i + 1] - g) < 12 && Math.abs(d[i + 2] - b) < 12 && d[i + 3] > 150;
  let blue = 0, orange = 0;
  for (let i = 0; i < d.length; i += 4) { if (near(i, 0, 114, 178)) blue++; if (near(i, 230, 159, 0)) orange++; }
  return [blue, orange];
}"""


def test_panel_compares_two_recordings(page: Page, lab, artifacts):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    runs = lab.root / "runs"
    subprocess.run([sys.executable, "-c", SCRIPT, str(runs)], env=env, check=True, timeout=120)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("import gradsight as gs"),
        nbformat.v4.new_code_cell('a = gs.open("runs/cmp_a")\nb = gs.open("runs/cmp_b")\nprint(len(a.findings()), len(b.findings()))'),
    ]
    nbformat.write(nb, lab.root / "compare.ipynb")

    page.goto(f"{lab.url}/lab/tree/compare.ipynb?token={lab.token}&reset")
    page.wait_for_function(KERNEL_IDLE)
    page.wait_for_function(KERNEL_IDLE)
    page.evaluate(RUN_CELL, 0)
    page.evaluate(RUN_CELL, 1)
    page.wait_for_function(KERNEL_IDLE)
    panel = open_panel(page)
    widen_sidebar(page)  # as someone comparing runs would drag it

    a, b = "baseline [cmp_a]", "deeper [cmp_b]"
    panel.locator(".jp-gradsight-watcher-select").select_option(a)
    compare = panel.locator(".jp-gradsight-compare")
    choose = compare.locator(".jp-gradsight-compare-select")
    expect(choose.locator("option")).to_have_count(2)  # nothing, or the other run (not A itself)
    choose.select_option(b)

    legend = compare.locator(".jp-gradsight-compare-run")
    expect(legend).to_have_count(2, timeout=30_000)
    expect(legend.nth(0)).to_contain_text(f"A: {a} · 30 steps")
    expect(legend.nth(1)).to_contain_text(f"B: {b} · 30 steps")
    # B is one Linear + Tanh deeper: its last two layers are missing in A, none in B
    expect(compare.locator(".jp-gradsight-compare-layers")).to_have_text(
        "Layers differ between the runs: not in A: 5, 6"
    )
    heads = compare.locator(".jp-gradsight-compare-col-head")
    expect(heads.nth(0)).to_contain_text(f"A: {a}: ")
    expect(heads.nth(1)).to_contain_text(f"B: {b}: ")
    only_b = compare.locator('.jp-gradsight-compare-col[data-run="B"] .jp-gradsight-compare-only')
    expect(only_b.first).to_be_visible()
    # the step B skipped for its NaN batch is B's alone; A found nothing
    expect(only_b.filter(has_text="skipped_step")).to_have_count(1)
    expect(compare.locator('.jp-gradsight-compare-col[data-run="A"]')).to_contain_text("nothing wrong detected")

    compare.scroll_into_view_if_needed()
    for box in (".jp-gradsight-compare-loss", ".jp-gradsight-compare-flow"):
        expect(compare.locator(box)).to_be_visible()
    page.wait_for_timeout(300)  # one animation frame for the charts
    blue, orange = page.evaluate(COLOUR_PIXELS, f"{PANEL} .jp-gradsight-compare-flow canvas")
    assert blue > 200 and orange > 200, f"the flow chart should draw bars of both runs: {blue} blue, {orange} orange"
    blue, orange = page.evaluate(COLOUR_PIXELS, f"{PANEL} .jp-gradsight-compare-loss canvas")
    assert blue > 50 and orange > 50, f"the loss chart should draw both runs: {blue} blue, {orange} orange"
    page.screenshot(path=str(artifacts / "compare-page.png"))
    panel.screenshot(path=str(artifacts / "compare.png"))


RANKED = """from gradsight.comm.testing import FakeRankedWatcher
from gradsight import bus
ddp = FakeRankedWatcher("DDP", world_size=4, rank=0)
ddp.advance(12)
ddp.step_seconds = [0.010, 0.011, 0.034, 0.010]  # rank 2 straggles
ddp.add_finding(rank=0, step=7, last_step=7, count=1, layer="fc1", kind="nan_origin", severity="error",
                message="NaN in the parameter gradient of fc1 (after the all-reduce)")
ddp.add_finding(rank=1, step=7, last_step=7, count=1, layer="fc2", kind="rank_nonfinite", severity="error",
                message="rank 1 produced the first non-finite value: activation of fc2 at step 7")
ddp.add_finding(rank=2, step=4, last_step=12, count=9, layer=None, kind="straggler", severity="warning",
                message="rank 2's step takes 3.2x the median of the other ranks")
bus.add(ddp)"""


def test_panel_rank_selector_marks_the_rank_that_went_wrong_first(page: Page, lab, artifacts):
    """A source with the Watcher's rank API (a fake: a real torch.distributed job is tested at the
    comm level): the panel shows one button per rank, a red dot and a line on rank 1 (its
    rank_nonfinite wins over the NaN rank 0 saw after the all-reduce at the same step), and the
    selected rank's step times against the other ranks'."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("import gradsight as gs"), nbformat.v4.new_code_cell(RANKED)]
    nbformat.write(nb, lab.root / "ranks.ipynb")
    page.goto(f"{lab.url}/lab/tree/ranks.ipynb?token={lab.token}&reset")
    page.wait_for_function(KERNEL_IDLE)
    page.evaluate(RUN_CELL, 0)
    page.evaluate(RUN_CELL, 1)
    page.wait_for_function(KERNEL_IDLE)
    page.locator('.jp-SideBar.jp-mod-right .lm-TabBar-tab[data-id="gradsight-panel"]').click()
    ranks = page.locator(f"{PANEL} .jp-gradsight-ranks")
    expect(ranks.locator(".jp-gradsight-rank")).to_have_count(4, timeout=60_000)
    bad = ranks.locator(".jp-gradsight-rank:has(.jp-gradsight-rank-bad)")
    expect(bad).to_have_count(1)
    expect(bad).to_have_attribute("data-rank", "1")
    expect(bad).to_have_attribute("aria-checked", "true")
    expect(ranks.locator(".jp-gradsight-rank-first")).to_contain_text("rank 1 went wrong first (step 7)")
    ranks.locator('.jp-gradsight-rank[data-rank="2"]').click()
    step_row = ranks.locator("tbody tr").first
    expect(step_row).to_contain_text("34")  # rank 2's median step, ms
    expect(step_row.locator("td.jp-gradsight-bad")).to_have_count(2)  # its time and ratio stand out
    findings = page.locator(f"{PANEL} .jp-gradsight-findings")
    expect(findings.locator(".jp-gradsight-pill-rank")).to_have_count(3)
    # a live watcher holds its own rank's layers only: the flow chart says whose it shows
    expect(page.locator(f"{PANEL} .jp-gradsight-flow .jp-gradsight-rank-note")).to_contain_text(
        "layer charts show rank 0 (this process)")
    expect(page.locator(f"{PANEL} .jp-gradsight-error")).to_have_count(0)  # every request answered
    page.locator(PANEL).screenshot(path=str(artifacts / "ranks.png"))
