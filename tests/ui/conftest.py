"""Fixtures for the browser tests: one JupyterLab server and one Chromium per session.

The tests FAIL (never skip) when Chromium, the labextension or the server is missing:
`make test` must not go green with the panel broken. Screenshots and the server log go to
test-artifacts/ui/.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "ui"
CHROMIUM = os.environ.get("GRADSIGHT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    def __init__(self, url: str, token: str, root: Path, proc: subprocess.Popen, log: Path):
        self.url, self.token, self.root, self.proc, self.log = url, token, root, proc, log

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def _this_checkouts_panel(installed: Path, tmp_path_factory) -> dict[str, str]:
    """The environment that makes the server load this checkout's built panel (``jlpm build``
    writes gradsight/labextension/) ahead of the venv's installed one, when they differ (a
    worktree testing its own front-end against a venv another checkout installed)."""
    built = ROOT / "gradsight" / "labextension"
    if not (built / "package.json").exists() or installed.parent.resolve() == built.resolve():
        return {}
    data = tmp_path_factory.mktemp("jupyter-path")
    (data / "labextensions").mkdir()
    (data / "labextensions" / "gradsight").symlink_to(built, target_is_directory=True)
    return {"JUPYTER_PATH": os.pathsep.join(filter(None, [str(data), os.environ.get("JUPYTER_PATH")]))}


@pytest.fixture(scope="session")
def lab(tmp_path_factory, artifacts) -> LabServer:
    """JupyterLab on a free port, serving a temp folder with a copy of the example notebook."""
    labext = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "gradsight" / "package.json"
    assert labext.exists(), (
        f"the gradsight labextension is not installed ({labext} missing): run `make setup`"
    )
    root = tmp_path_factory.mktemp("lab-root")
    shutil.copy(ROOT / "examples" / "00_panel_demo.ipynb", root / "demo.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.update(
        GRADSIGHT_LAB_PORT=str(port),
        GRADSIGHT_LAB_TOKEN=token,
        GRADSIGHT_LAB_ROOT=str(root),
        # the kernel must be this venv's python, with this checkout importable
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}",
        JUPYTER_PLATFORM_DIRS="1",
        GRADSIGHT_COMM_LOG="debug",  # each push in lab-server.log
    )
    env.update(_this_checkouts_panel(labext, tmp_path_factory))
    log = artifacts / "lab-server.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--config",
        str(Path(__file__).parent / "jupyter_server_test_config.py"),
    ]
    with open(log, "w") as log_f:
        proc = subprocess.Popen(cmd, env=env, stdout=log_f, stderr=subprocess.STDOUT, cwd=root)
    server = LabServer(f"http://127.0.0.1:{port}", token, root, proc, log)
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(f"{server.url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer within 120 s:\n{server.log_tail()}")
            time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} not found: run `make chromium` (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, artifacts, request):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    console: list[str] = []
    t0 = time.monotonic()
    pg.on("console", lambda m: console.append(f"{time.monotonic() - t0:7.2f} {m.type}: {m.text}"))
    pg.on("pageerror", lambda e: console.append(f"{time.monotonic() - t0:7.2f} pageerror: {e}"))
    yield pg
    (artifacts / f"{request.node.name}-console.log").write_text("\n".join(console))
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        pg.screenshot(path=str(artifacts / f"{request.node.name}-FAILED.png"))
    context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
