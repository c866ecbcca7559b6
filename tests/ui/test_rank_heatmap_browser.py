"""The panel's per-rank layer charts and its layers x steps heatmap, in a real browser.

1. A recording of a real world-2 gloo job (tests/ranked_recording.py: rank 1's inputs are 100x
   rank 0's, and rank 1 meets a NaN batch at step 25), opened in the notebook: the panel selects
   rank 1 (it went wrong first) and its gradient-flow chart, heatmap and layer detail
   (histograms over steps, latest statistics) carry rank 1's layer statistics (the numbers the
   recording holds for rank 1, compared here); clicking rank 0 switches all three to rank 0's.
   The heatmap of rank 1 has a red (NaN/Inf) column at step 25; rank 0's has none.
   Screenshots: rank-layers-rank1.png, rank-layers-rank0.png, rank-layer-detail-rank{1,0}.png.
2. A model trained in the notebook's kernel (a live watcher), 600 steps with a NaN batch at
   step 400: the heatmap thins the steps to 300 columns of 2 and says so, keeps the NaN step
   as a red column, reads out a hovered cell, and switches metric (act_std, measured on detail
   steps only: the steps without it are left out). Screenshots: heatmap-live*.png.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from lab_page import KERNEL_IDLE, PANEL, RUN_CELL, open_panel, widen_sidebar
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

ROOT = Path(__file__).resolve().parents[2]
# what the panel's store holds (the bars and the heatmap are drawn from it)
MODEL = """() => {
  const panel = Array.from(window.jupyterapp.shell.widgets('right')).find(w => w.id === 'gradsight-panel');
  const m = panel.model;
  const s = m.snapshot;
  return {
    rank: m.rank, layersRank: m.layersRank,
    names: s ? s.layers.names : [], gradNorm: s && s.layers.columns.grad_norm ? Array.from(s.layers.columns.grad_norm) : [],
    heatmapRank: m.heatmap ? m.heatmap.rank : null, heatmapColumns: m.heatmap ? m.heatmap.columns : 0,
    layerName: m.layerName, layerRank: m.layer ? m.layer.rank : null,
    layerStats: m.layer ? m.layer.stats : null,
    layerHists: m.layer ? Object.fromEntries(Object.entries(m.layer.histograms).map(([of, series]) => [of,
      series.map(h => [h.step, h.nan, h.zero, h.counts.reduce((a, b) => a + b, 0)])])) : null,
  };
}"""
# red (NaN/Inf) pixels of the heatmap canvas per cell column (by each pixel's centre), and how
# many pixels are drawn on the viridis scale
RED_COLUMNS = """(args) => {
  const [sel, columns, labelW] = args;
  const c = document.querySelector(sel);
  const ratio = window.devicePixelRatio || 1;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const plotW = c.width / ratio - labelW - 4;
  const red = {};
  let viridis = 0;
  for (let y = 0; y < c.height; y++) {
    for (let x = Math.ceil(labelW * ratio); x < c.width; x++) {
      const i = 4 * (y * c.width + x);
      if (d[i] === 255 && d[i + 1] === 32 && d[i + 2] === 64) {
        const c = Math.floor((((x + 0.5) / ratio - labelW) / plotW) * columns);
        red[c] = (red[c] || 0) + 1;
      } else if (d[i + 3] === 255 && d[i + 2] > d[i] && d[i + 1] > 40) {
        viridis++; // blue-green-purple cells of the scale
      }
    }
  }
  return [red, viridis];
}"""
LABEL_W = 96  # views/heatmap.ts LABEL_W


def _red_columns(page: Page, columns: int) -> list[int]:
    """The cell columns drawn red, a pixel straddling a neighbour's edge aside."""
    red, viridis = page.evaluate(RED_COLUMNS, [f"{PANEL} .jp-gradsight-heatmap-canvas", columns, LABEL_W])
    assert viridis > 1000, "the heatmap should draw its cells on the colour scale"
    most = max(red.values(), default=0)
    return sorted(int(c) for c, n in red.items() if n > most / 4)


def _notebook(lab, name: str, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, lab.root / name)


def _open_panel(page: Page, lab, name: str, cells: int):
    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}&reset")
    page.wait_for_function(KERNEL_IDLE)
    for i in range(cells):
        page.evaluate(RUN_CELL, i)
    page.wait_for_function(KERNEL_IDLE)
    panel = open_panel(page)
    widen_sidebar(page)  # as someone reading a heatmap would drag it
    return panel


def _wait_model(page: Page, predicate: str) -> dict:
    """What the panel's store holds once ``predicate`` holds; a clear failure naming what it holds instead."""
    try:
        page.wait_for_function(f"() => {{ const m = ({MODEL})(); return {predicate}; }}", timeout=30_000)
    except PlaywrightTimeout:
        held = page.evaluate(MODEL)
        pytest.fail(f"the panel never reached {predicate} in 30 s; it holds rank {held['rank']}, layers of rank "
                    f"{held['layersRank']}, heatmap of rank {held['heatmapRank']}, layer detail of rank "
                    f"{held['layerRank']}")
    return page.evaluate(MODEL)


def test_rank_selector_switches_the_layer_charts_of_a_ranked_recording(page: Page, lab, artifacts):
    import gradsight as gs

    job = lab.root / "runs" / "ddp"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    subprocess.run([sys.executable, str(ROOT / "tests" / "ranked_recording.py"), str(job)], env=env, check=True,
                   timeout=180, capture_output=True)
    from gradsight.comm.limits import MAX_HIST_STEPS

    rec = gs.open(job)
    try:
        expected = {r: rec.layers(rank=r) for r in (0, 1)}
        # the layer detail the panel must show, per rank and layer: [step, NaN, zeros, binned count]
        # of each kind's last MAX_HIST_STEPS histograms, read from the recording directly
        hists = {(r, layer, of): [[s, h.nan, h.zero, float(h.counts.sum())] for s in steps
                                  for h in [rec.histogram(layer, of=of, step=s, rank=r)]]
                 for r in (0, 1) for layer in rec.layer_names for of in ("grad", "activation", "weight")
                 for steps in [rec.histogram_steps(layer, of, rank=r)[-MAX_HIST_STEPS:]]}
    finally:
        rec.close()
    _notebook(lab, "ranked.ipynb", ["import gradsight as gs", 'rec = gs.open("runs/ddp")'])
    panel = _open_panel(page, lab, "ranked.ipynb", 2)

    ranks = panel.locator(".jp-gradsight-ranks")
    expect(ranks.locator(".jp-gradsight-rank")).to_have_count(2, timeout=30_000)
    expect(ranks.locator('.jp-gradsight-rank[data-rank="1"]')).to_have_attribute("aria-checked", "true")
    expect(ranks.locator(".jp-gradsight-rank-first")).to_contain_text("rank 1 went wrong first (step 25)")
    flow, heat = panel.locator(".jp-gradsight-flow"), panel.locator(".jp-gradsight-heatmap")
    for rank in (1, 0):
        if rank == 0:
            ranks.locator('.jp-gradsight-rank[data-rank="0"]').click()
        shown = _wait_model(page, f"m.layersRank === {rank} && m.heatmapRank === {rank}")
        assert shown["rank"] == rank and shown["names"] == list(expected[rank]["layer"])
        np.testing.assert_allclose(shown["gradNorm"], expected[rank]["grad_norm"].to_numpy(), rtol=1e-12)
        expect(flow.locator(".jp-gradsight-muted.jp-gradsight-note")).to_contain_text(f"rank {rank} · step 40")
        expect(flow.locator(".jp-gradsight-rank-note")).to_be_hidden()  # nothing to explain: it is that rank
        expect(heat.locator(".jp-gradsight-heatmap-label")).to_have_text(
            f"log10 gradient norm (w.r.t. output) · rank {rank} · 40 step(s)")
        heat.scroll_into_view_if_needed()
        page.wait_for_timeout(300)  # one animation frame
        red = _red_columns(page, 40)
        assert red == ([25] if rank == 1 else []), f"rank {rank}: red (NaN/Inf) columns {red}"
        flow.scroll_into_view_if_needed()
        panel.screenshot(path=str(artifacts / f"rank-layers-rank{rank}.png"))

        # the layer detail: that rank's histograms over steps and latest statistics, labelled so
        shown = _wait_model(page, f"m.layerRank === {rank}")
        layer = shown["layerName"]
        row = expected[rank].set_index("layer").loc[layer]
        for metric in ("grad_norm", "act_norm"):  # measured every step
            np.testing.assert_allclose(shown["layerStats"][metric], row[metric], rtol=1e-12)
        for of in ("grad", "activation", "weight"):
            got, want = shown["layerHists"][of], hists[rank, layer, of]
            assert [g[:3] for g in got] == [w[:3] for w in want], f"rank {rank} {layer} {of}"
            np.testing.assert_allclose([g[3] for g in got], [w[3] for w in want], rtol=1e-9)
        detail = panel.locator(".jp-gradsight-layer")
        expect(detail.locator(".jp-gradsight-stats-table th").first).to_have_text(
            f"rank {rank}, latest (step {int(row['step'])})")
        expect(detail.locator(".jp-gradsight-rank-note")).to_be_hidden()
        detail.scroll_into_view_if_needed()
        page.wait_for_timeout(300)
        detail.screenshot(path=str(artifacts / f"rank-layer-detail-rank{rank}.png"))
    assert not np.allclose(expected[0]["grad_norm"], expected[1]["grad_norm"])  # the switch was visible
    expect(panel.locator(".jp-gradsight-error")).to_have_count(0)  # every request answered


LIVE = """import torch
from torch import nn
torch.manual_seed(0)
layers = []
for i in range(8):
    layers += [nn.Linear(16, 16), nn.Tanh()]
model = nn.Sequential(*layers, nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
w = gs.watch(model, optimizer=opt, name="deep", on_nonfinite="skip")
gen = torch.Generator().manual_seed(1)
for step in range(600):
    x = torch.randn(32, 16, generator=gen)
    if step == 400:
        x[0, 0] = float("nan")
    loss = (model(x) - x[:, :1]).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step(); w.step(loss=loss)
"""


def test_heatmap_of_a_live_watcher_shows_where_and_when(page: Page, lab, artifacts):
    _notebook(lab, "heatmap.ipynb", ["import gradsight as gs", LIVE])
    panel = _open_panel(page, lab, "heatmap.ipynb", 2)
    heat = panel.locator(".jp-gradsight-heatmap")
    label = heat.locator(".jp-gradsight-heatmap-label")
    expect(label).to_have_text(
        "log10 gradient norm (w.r.t. output) · 600 steps in 300 columns of 2 (each cell: its most extreme step)",
        timeout=30_000)
    expect(heat.locator('.jp-gradsight-heatmap-key[data-key="nonfinite"]')).to_be_visible()
    heat.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    assert _red_columns(page, 300) == [200], "step 400 is column 200 of 300"

    # hover the red column, on the first layer's row
    canvas = heat.locator(".jp-gradsight-heatmap-canvas")
    box = canvas.bounding_box()
    plot_w = box["width"] - LABEL_W - 4
    canvas.hover(position={"x": LABEL_W + (200.5 / 300) * plot_w, "y": 20})
    expect(heat.locator(".jp-gradsight-heatmap-readout")).to_contain_text("steps 400–401 · NaN/Inf in 1 of 2 step(s)")
    heat.screenshot(path=str(artifacts / "heatmap-live.png"))

    heat.locator(".jp-gradsight-heatmap-metric").select_option("act_std")
    # measured on detail steps only: the others are left out, and the label says how many
    expect(label).to_contain_text("log10 activation std · ", timeout=30_000)
    expect(label).to_contain_text("step(s) without a value left out")
    page.wait_for_timeout(300)
    heat.screenshot(path=str(artifacts / "heatmap-live-act-std.png"))
    page.locator(PANEL).screenshot(path=str(artifacts / "heatmap-live-panel.png"))
    expect(panel.locator(".jp-gradsight-error")).to_have_count(0)  # every request answered
