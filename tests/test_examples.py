"""The example notebooks run headless (nbclient, fresh kernels) and show what they promise.

Each notebook prints one ``GRADSIGHT_RESULT {json}`` line with its outcome; the asserts
read it and the rendered outputs (figures as PNG, the watcher's HTML summary, the
dashboard widget). The notebooks are committed without outputs; this test never writes
them back.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbclient")
from gradsight.demo import run_notebook  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MINE = ("01_debug_training", "02_gradcheck_custom_layer", "03_diagnose_instability")


@pytest.fixture(scope="module")
def runs():
    with ThreadPoolExecutor(max_workers=2) as pool:  # kernel start-up overlaps; 2 cores
        done = dict(zip(MINE, pool.map(lambda n: run_notebook(EXAMPLES / f"{n}.ipynb", timeout=240), MINE),
                        strict=True))
    return done


def result_of(run) -> dict:
    assert run.ok, f"{run.path.name} failed:\n{run.error}"
    lines = [ln for ln in run.stream_text().splitlines() if ln.startswith("GRADSIGHT_RESULT ")]
    assert lines, f"{run.path.name} printed no GRADSIGHT_RESULT line"
    return json.loads(lines[-1].split(" ", 1)[1])


def outputs(run, mime: str) -> int:
    return sum(mime in o.get("data", {}) for c in run.notebook.cells for o in c.get("outputs", []))


@pytest.mark.parametrize("name", MINE)
def test_committed_without_outputs(name):
    nb = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: strip outputs before committing"


def test_01_finds_the_planted_faults_and_the_fix_clears_them(runs):
    run = runs["01_debug_training"]
    r = result_of(run)
    assert {"dead_units", "vanishing_gradient"} <= set(r["before"])
    assert "relu2" in r["before_layers"]
    assert r["after"] == [], f"the fixed model should be clean, got {r['after']}"
    assert r["dead_fraction_relu2"] >= 0.7
    assert r["loss_fixed"] < 0.5 * r["loss_broken"]
    assert outputs(run, "image/png") >= 4          # gradient flow ×2, dead units, heatmap
    assert outputs(run, "text/html") >= 2          # the watcher summaries
    assert outputs(run, "application/vnd.jupyter.widget-view+json") == 1  # the dashboard
    assert run.seconds < 120


def test_02_gradcheck_finds_the_bug_standalone_and_in_the_model(runs):
    run = runs["02_gradcheck_custom_layer"]
    r = result_of(run)
    assert r["standalone_buggy"] is False and r["in_model_buggy"] is False
    assert r["standalone_fixed"] is True and r["in_model_fixed"] is True
    assert r["failed_tensors"]
    assert outputs(run, "image/png") >= 2          # report figures
    html = "".join(o["data"].get("text/html", "") for c in run.notebook.cells for o in c.get("outputs", [])
                   if "data" in o)
    assert "FAILED" in html and "passed" in html


def test_03_early_warning_nan_origins_and_underflow(runs):
    run = runs["03_diagnose_instability"]
    r = result_of(run)
    div = r["divergence"]
    assert {"exploding_gradient", "nan_origin"} <= set(div["kinds"])
    assert div["first_warning"] is not None and div["first_warning"] < div["first_nonfinite_loss"]
    log, sqrt = r["nan"]
    assert log["layers"] == ["1"] and log["phases"] == ["forward"] and "nan_origin" in log["kinds"]
    assert sqrt["layers"] == ["1"] and sqrt["phases"] == ["backward"]
    assert any("log" in op for op in log["ops"]), log["ops"]
    assert "underflow" in r["underflow"]["kinds"] and "underflow" not in r["underflow"]["kinds_fixed"]
    assert outputs(run, "image/png") >= 4
