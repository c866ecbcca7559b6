"""Examples 04 (Lightning) and 05 (Hugging Face Trainer) run headless and show what they promise."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbclient")
pytest.importorskip("pytorch_lightning")
pytest.importorskip("transformers")
from gradsight.demo import run_notebook  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAMES = ("04_lightning_callback", "05_huggingface_trainer")


def _result(name):
    run = run_notebook(EXAMPLES / f"{name}.ipynb", timeout=240)
    assert run.ok, f"{name} failed:\n{run.error}"
    lines = [ln for ln in run.stream_text().splitlines() if ln.startswith("GRADSIGHT_RESULT ")]
    assert lines, f"{name} printed no GRADSIGHT_RESULT line"
    return run, json.loads(lines[-1].split(" ", 1)[1])


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")


def test_04_lightning_names_the_dead_layer_and_the_nan():
    run, r = _result("04_lightning_callback")
    assert r["dead_layers"] == ["net.3"]
    assert "nan_origin" in r["kinds"] and r["nan_step"] == 22
    assert r["steps"] == 24 and r["raised"] == [22, "forward"]
    assert run.seconds < 60


def test_05_hf_trainer_healthy_then_stops_at_the_nan():
    run, r = _result("05_huggingface_trainer")
    assert r["healthy_findings"] == 0 and r["steps"] == 10
    assert r["stopped_at"] == 6 and r["nan_step"] == 6 and r["nan_layer"] == "transformer.h.0.attn"
    assert r["logged_finite"] and r["tensorboard_steps"] == 10
    assert run.seconds < 60
