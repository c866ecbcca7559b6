"""What the browser tests do to a JupyterLab page: wait for the kernel, run a cell, open the
Gradients panel, widen the sidebar as someone reading charts would."""

from __future__ import annotations

from playwright.sync_api import Locator, Page, expect

PANEL = "#gradsight-panel"
KERNEL_IDLE = (
    "() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle'"
)
RUN_CELL = """async (i) => {
  const app = window.jupyterapp;
  const nb = app.shell.currentWidget;
  nb.content.activeCellIndex = i;
  await app.commands.execute('notebook:run-cell');
}"""


def open_panel(page: Page) -> Locator:
    """Click the Gradients tab; the panel once it is connected to the notebook's kernel."""
    page.locator('.jp-SideBar.jp-mod-right .lm-TabBar-tab[data-id="gradsight-panel"]').click()
    panel = page.locator(PANEL)
    expect(panel.locator(".jp-gradsight-state")).to_have_attribute("data-state", "connected", timeout=60_000)
    return panel


def widen_sidebar(page: Page, by: int = 250) -> None:
    """Drag the right sidebar's handle `by` pixels to the left."""
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle:not(.lm-mod-hidden)").last
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] - by, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
