"""Recordings: every query of gs.open(path) equals the Watcher's that wrote it; the format is
plain Parquet + JSON; bad paths and files get clear errors; writing never blocks training."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.recording import RecordingError, RecordingNotFound, RecordingVersionError
from gradsight.recording.format import ChunkName
from gradsight.records.metrics import LAYER_METRICS
from gradsight.records.run_history import STEP_COLUMNS
from gradsight.warnings import GradsightWarning
from tests import faulty_models as fm

pytest.importorskip("pyarrow")

KINDS = ("activation", "grad", "weight")


def assert_same_queries(rec, w) -> None:
    """Every query of the read API, on both."""
    assert rec.layer_names == w.layer_names
    assert rec.last_step == w.last_step
    pd.testing.assert_frame_equal(rec.layers(), w.layers())
    pd.testing.assert_frame_equal(rec.steps(), w.steps())
    for m in LAYER_METRICS + STEP_COLUMNS:
        pd.testing.assert_frame_equal(rec.history(m), w.history(m))
    for layer in w.layer_names:
        for of in KINDS:
            steps = w.histogram_steps(layer, of)
            assert rec.histogram_steps(layer, of) == steps
            for s in steps:
                a, b = rec.histogram(layer, of, s), w.histogram(layer, of, s)
                np.testing.assert_array_equal(a.edges, b.edges)
                np.testing.assert_array_equal(a.counts, b.counts)
                assert (a.layer, a.of, a.step, a.zero, a.nan, a.posinf, a.neginf, a.subnormal) == \
                       (b.layer, b.of, b.step, b.zero, b.nan, b.posinf, b.neginf, b.subnormal)
        try:
            expected = w.unit_history(layer)
        except ValueError as exc:
            with pytest.raises(ValueError, match="no unit activity"):
                rec.unit_history(layer)
            assert "no unit activity" in str(exc)
        else:
            pd.testing.assert_frame_equal(rec.unit_history(layer), expected)
    pd.testing.assert_frame_equal(rec.findings(), w.findings())
    for c in w.findings().columns:  # same Python types too (affected: tuples)
        assert rec.findings()[c].map(type).tolist() == w.findings()[c].map(type).tolist(), c


def _train(model, steps, path=None, seed=1, **watch):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, record=path, **watch)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 8, generator=gen)
        loss = (model(x) - x[:, :1]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step(loss=loss)
    return w


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))


# --- round trips ---------------------------------------------------------------------------

def test_streamed_recording_answers_every_query_like_the_watcher(tmp_path):
    # chunks by step count only (a loaded machine would otherwise cut them by time, then merge them)
    w = _train(_mlp(), 250, gs.RecordTo(tmp_path / "run", flush_steps=50, flush_seconds=3600), histogram_every=4)
    w.close()
    rec = gs.open(tmp_path / "run")
    assert not rec.live and rec.step_count == 250
    assert len(list((tmp_path / "run" / "steps").iterdir())) == 5  # really several chunks
    assert_same_queries(rec, w)


@pytest.mark.parametrize("scenario", ["forward_nan", "dead_relu"])
def test_findings_round_trip_streamed_and_saved(tmp_path, scenario):
    kwargs = {"steps": 30} if scenario == "dead_relu" else {}
    run = getattr(fm, scenario)(**kwargs)  # a model with the fault, watched without recording
    w = run.watcher
    assert len(w.findings()) > 0
    w.save(tmp_path / "saved")
    assert_same_queries(gs.open(tmp_path / "saved"), w)
    streamed = fm.train(*_again(scenario), watch={"record": tmp_path / "streamed"})
    streamed.watcher.close()
    assert_same_queries(gs.open(tmp_path / "streamed"), streamed.watcher)


def _again(scenario):
    """The same fault, built again for a streamed run (fm's builders train immediately)."""
    torch.manual_seed(0)
    if scenario == "forward_nan":
        model = nn.Sequential(nn.Linear(8, 16), fm.LogFeatures(), nn.Linear(16, 4))
        return (model, torch.optim.SGD(model.parameters(), lr=0.01), fm.regression(d=8, k=4), 5,
                nn.functional.mse_loss)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[2].bias.fill_(-10.0)
    return (model, torch.optim.SGD(model.parameters(), lr=0.01), fm.regression(d=16, k=4, scale=1.0), 30,
            nn.functional.mse_loss)


def test_save_of_a_long_decimated_run_and_of_a_recording(tmp_path):
    w = _train(_mlp(), 120, histogram_every=1)
    w.save(tmp_path / "a")
    rec = gs.open(tmp_path / "a")
    assert_same_queries(rec, w)
    rec.save(tmp_path / "b")  # anything with the read API saves
    assert_same_queries(gs.open(tmp_path / "b"), w)


def test_recording_does_not_change_training(tmp_path):
    a = _mlp(3)
    b = _mlp(3)
    _train(a, 20, histogram_every=2).close()
    _train(b, 20, tmp_path / "run", histogram_every=2).close()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_files_are_plain_parquet_and_json(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    w = _train(_mlp(), 30, tmp_path / "run", histogram_every=5)
    w.close()
    root = tmp_path / "run"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "gradsight-recording" and manifest["format_version"] == "1.1"
    assert [entry["name"] for entry in manifest["layers"]] == w.layer_names
    layers = pd.read_parquet(root / "layers")  # the whole table, without gradsight
    assert list(layers.columns) == ["step", "layer", *LAYER_METRICS]
    assert len(layers) == 30 * len(w.layer_names)
    steps = pd.read_parquet(root / "steps").sort_values("step")
    np.testing.assert_array_equal(steps["loss"].to_numpy(), w.steps()["loss"].to_numpy())
    hist = pd.read_parquet(root / "histograms")
    assert set(hist["of"]) == set(KINDS) and hist["edges"].map(len).eq(w.bins + 1).all()
    allowed = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
               pa.types.is_large_string, pa.types.is_list, pa.types.is_dictionary, pa.types.is_null)
    for f in root.rglob("*"):
        if f.is_file():
            assert f.suffix in (".json", ".parquet"), f
            if f.suffix == ".parquet":
                for field in pq.read_schema(f):  # data only: no object/extension (pickled) columns
                    assert any(ok(field.type) for ok in allowed), (f, field)


# --- errors ------------------------------------------------------------------------------------

def test_clear_errors_for_paths_that_are_not_recordings(tmp_path):
    with pytest.raises(RecordingNotFound, match="does not exist"):
        gs.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match="empty directory"):
        gs.open(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("a,b\n")
    with pytest.raises(RecordingError, match="not a gradsight recording.*data.csv"):
        gs.open(tmp_path / "other")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(RecordingError, match="is a file"):
        gs.open(tmp_path / "file.txt")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "manifest.json").write_text("{not json")
    with pytest.raises(RecordingError, match="not valid JSON"):
        gs.open(tmp_path / "badjson")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "manifest.json").write_text('{"name": "something else"}')
    with pytest.raises(RecordingError, match="not a gradsight recording manifest"):
        gs.open(tmp_path / "foreign")
    _train(_mlp(), 2, tmp_path / "damaged").close()
    manifest = json.loads((tmp_path / "damaged" / "manifest.json").read_text())
    manifest["layers"] = [{"type": "Linear"}]
    (tmp_path / "damaged" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecordingError, match="manifest.json' is damaged"):
        gs.open(tmp_path / "damaged")
    with pytest.raises(TypeError, match="path of a recording"):
        gs.open(42)


def test_newer_major_version_names_the_gradsight_that_reads_it(tmp_path):
    _train(_mlp(), 3, tmp_path / "run").close()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    manifest.update(format_version="1.7", extra_key=1)  # a newer minor opens
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    assert gs.open(tmp_path / "run").step_count == 3
    manifest.update(format_version="2.0", read_by="0.9.0", gradsight_version="0.9.3")
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecordingVersionError, match=r"format 2\.0.*gradsight 0\.9\.3.*gradsight >= 0\.9\.0"):
        gs.open(tmp_path / "run")


def test_a_truncated_chunk_is_named_and_the_rest_opens(tmp_path):
    w = _train(_mlp(), 250, gs.RecordTo(tmp_path / "run", flush_steps=50, flush_seconds=3600))
    w.close()
    files = sorted((tmp_path / "run" / "layers").iterdir())
    assert len(files) >= 3
    bad = files[1]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.warns(GradsightWarning, match=bad.name):
        rec = gs.open(tmp_path / "run")
    assert len(rec.problems) == 1 and bad.name in rec.problems[0]
    lost = ChunkName.parse(bad.name)
    kept = rec.steps()["step"].to_numpy()
    assert not ((kept >= lost.first) & (kept <= lost.last)).any()  # the whole chunk goes, consistently
    assert set(kept) == set(range(250)) - set(range(lost.first, lost.last + 1))
    assert rec.history("grad_norm").index.equals(pd.Index(kept, name="step"))
    # garbage in place of the findings snapshot: named, and the recording still opens
    (tmp_path / "run" / "findings.parquet").write_bytes(b"PAR1 not really")
    with pytest.warns(GradsightWarning) as caught:
        assert len(gs.open(tmp_path / "run").findings()) == 0
    assert any("findings.parquet" in str(c.message) for c in caught)


def test_writing_refuses_foreign_directories_and_replaces_its_own(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    model = _mlp()
    with pytest.raises(RecordingError, match="not empty and is not a gradsight recording"):
        gs.watch(model, record=tmp_path / "stuff")
    assert all(not m._forward_hooks for m in model.modules())  # no hook left behind
    _train(_mlp(), 3, tmp_path / "run").close()
    w = _train(_mlp(), 5, tmp_path / "run")  # the same process again: a re-run cell records afresh
    w.close()
    assert gs.open(tmp_path / "run").step_count == 5
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    manifest["writer"]["pid"] = -1  # somebody else's run
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecordingError, match="already holds a recording"):
        gs.watch(_mlp(), record=tmp_path / "run")
    with pytest.raises(RecordingError, match="already holds a recording"):
        w.save(tmp_path / "run")
    with pytest.raises(ValueError, match="flush_steps"):
        gs.RecordTo(tmp_path / "x", flush_steps=0)
    live = gs.watch(_mlp(), record=tmp_path / "busy", name="first")
    with pytest.raises(RecordingError, match="being recorded right now by watcher 'first'"):
        gs.watch(_mlp(), record=tmp_path / "busy")
    with pytest.raises(RecordingError, match="being recorded right now"):
        live.save(tmp_path / "busy")
    live.close()
    gs.watch(_mlp(), record=tmp_path / "busy").close()  # free again once closed


# --- live --------------------------------------------------------------------------------------

def test_a_reader_follows_a_run_in_this_process(tmp_path):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, record=gs.RecordTo(tmp_path / "run", flush_steps=5, flush_seconds=0.05))
    rec = gs.open(tmp_path / "run")
    assert rec.live and rec.step_count == 0 and len(rec.steps()) == 0
    seen = []
    for step in range(40):
        loss = model(torch.randn(4, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step(loss=loss)
        if step % 10 == 9:
            deadline = time.monotonic() + 10
            while len(rec.steps()) < step - 6:  # queries read new chunks (the writer is a background thread)
                assert time.monotonic() < deadline
                time.sleep(0.02)
            seen.append(len(rec.steps()))
    assert seen == sorted(seen) and seen[-1] >= 33
    assert rec.live
    w.close()
    rec.refresh()
    assert not rec.live
    assert_same_queries(rec, w)


def test_a_slow_disk_thins_the_recording_and_never_blocks(tmp_path, monkeypatch):
    from gradsight.recording import chunks
    from gradsight.recording.recorder import StreamRecorder

    real = chunks.write_table

    on_training_thread = []

    def slow(path, table):
        on_training_thread.append(threading.current_thread() is threading.main_thread())
        time.sleep(0.2)
        return real(path, table)

    monkeypatch.setattr(chunks, "write_table", slow)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt)
    w._recorder = StreamRecorder(w, tmp_path / "run", hist_kinds=KINDS, flush_steps=2, flush_seconds=0.01,
                                 queue_steps=2)
    times = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GradsightWarning)
        for _ in range(60):
            t0 = time.perf_counter()
            loss = model(torch.randn(4, 8)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            w.step(loss=loss)
            times.append(time.perf_counter() - t0)
    behind = [str(c.message) for c in caught if "cannot keep up" in str(c.message)]
    assert len(behind) == 1  # said once
    # no write ran on the training thread, and steps did not wait for the 0.2 s writes (the
    # median: a single step can be slow on a loaded machine for reasons of its own)
    assert on_training_thread and not any(on_training_thread)
    assert sorted(times)[len(times) // 2] < 0.1
    monkeypatch.setattr(chunks, "write_table", real)
    w.close()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["thinned"]["stride"] >= 2 and manifest["thinned"]["dropped_steps"] > 0
    rec = gs.open(tmp_path / "run")
    kept = rec.steps()["step"].to_numpy()
    assert 0 < len(kept) < 60 and (np.diff(kept) > 0).all()


# --- size ----------------------------------------------------------------------------------------

def test_long_runs_stay_bounded_and_covered(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import recording as bench

    n, cap = 4000, 64
    writer = bench.write_synthetic(tmp_path / "run", n, layers=4, flush_steps=25, capacity=cap, hist_capacity=8)
    on_disk = pd.read_parquet(tmp_path / "run" / "steps")["step"].to_numpy()
    assert len(on_disk) == len(set(on_disk))  # no leftovers after merges
    assert len(on_disk) <= cap * (3 + np.log2(n / cap)) + 25
    assert on_disk.min() == 0 and on_disk.max() == n - 1
    recent = np.sort(on_disk)[-cap:]
    assert (np.diff(recent) == 1).all()  # the newest steps are complete, the old ones thinned
    hist = pd.read_parquet(tmp_path / "run" / "histograms", columns=["step"])["step"].nunique()
    assert hist <= 8 * (2 + np.log2(n / 10 / 8)) + 3
    units = pd.read_parquet(tmp_path / "run" / "units", columns=["step"])["step"]
    assert units.nunique() <= 100 + 25 * 16 and units.max() == n - 1
    rec = gs.open(tmp_path / "run")
    assert rec.last_step == n - 1 and rec.steps()["step"].is_monotonic_increasing
    assert writer.bytes_written > 0


def test_a_dashboard_on_a_live_recording_follows_it(tmp_path):
    pytest.importorskip("ipywidgets")
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, record=gs.RecordTo(tmp_path / "run", flush_steps=2, flush_seconds=0.05))
    rec = gs.open(tmp_path / "run")
    dash = rec.dashboard()
    try:
        import re

        def header_step() -> int:
            return int(re.search(r"dashboard-step'>(\d+)<", dash.header.value).group(1))

        for k in range(1, 3):
            for _ in range(10):
                loss = model(torch.randn(4, 8)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                w.step(loss=loss)
            deadline = time.monotonic() + 10
            while header_step() < 10 * k - 1:  # redrawn by the follower thread, no call from here
                assert time.monotonic() < deadline, dash.header.value
                time.sleep(0.05)
        w.close()
        deadline = time.monotonic() + 10
        while header_step() < 20 or "closed" not in dash.header.value:
            assert time.monotonic() < deadline, dash.header.value
            time.sleep(0.05)
    finally:
        w.close()
        dash.close()


def test_chunks_left_over_by_a_crash_during_a_merge_are_ignored(tmp_path):
    import shutil

    w = _train(_mlp(), 60, gs.RecordTo(tmp_path / "run", flush_steps=20, flush_seconds=3600))
    w.close()
    root = tmp_path / "run"
    # a merge wrote its output, then the process died before removing its inputs: put inputs back
    for table in ("steps", "layers"):
        files = sorted((root / table).iterdir())
        merged = root / table / ChunkName(0, 59, 1).file
        shutil.copy(files[0], merged)
        for f in files[1:]:
            f.unlink()
        assert files[0].name == ChunkName(0, 19, 0).file  # left in place: the stale input ...
        files[0].write_bytes(b"stale")  # ... which is never read (else it would be reported)
        (root / table / ".tmp-123-L00-000000000020-000000000039.parquet").write_bytes(b"half")
    rec = gs.open(root)
    assert rec.problems == []
    assert rec.steps()["step"].is_unique and rec.history("grad_norm").index.is_unique


def test_a_follower_stays_consistent_while_old_chunks_are_merged_and_thinned(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import recording as bench

    root = tmp_path / "run"
    follower = []

    def look(step):
        if not follower:
            follower.append(gs.open(root))
        rec = follower[0]
        rec.refresh()
        steps = rec.steps()["step"].to_numpy()
        assert steps[-1] == step and (np.diff(steps) > 0).all()
        assert rec.history("grad_norm").index.is_unique and rec.last_step == step
        hist = rec.histogram_steps(rec.layer_names[0], "grad")
        assert hist == sorted(set(hist)) and hist[-1] <= step

    bench.write_synthetic(root, 1500, layers=4, flush_steps=25, capacity=64, hist_capacity=8, on_flush=look)
    merged = [c for c in (root / "steps").iterdir() if not c.name.startswith("L00")]
    assert merged  # the follower really read through merges
    fresh = gs.open(root)
    assert fresh.last_step == 1499 and len(fresh.steps()) < len(follower[0].steps())  # old steps thinned on disk


def test_a_format_1_0_recording_without_ranks_still_opens(tmp_path):
    """Format 1.1 added rank/world_size to the manifest (and, in jobs, ranks/ shards, ranks.parquet and
    three step columns): a 1.0 recording has none of them and opens as a run of one process."""
    w = _train(_mlp(), 5, tmp_path / "run")
    w.close()
    file = tmp_path / "run" / "manifest.json"
    manifest = json.loads(file.read_text())
    for key in ("rank", "world_size"):
        del manifest[key]
    manifest["format_version"] = "1.0"
    file.write_text(json.dumps(manifest))
    rec = gs.open(tmp_path / "run")
    assert (rec.rank, rec.world_size) == (0, 1) and rec.problems == []
    pd.testing.assert_frame_equal(rec.history("grad_norm", rank=0), w.history("grad_norm"))
    with pytest.raises(ValueError, match="ran in one process"):
        rec.ranks()
    with pytest.raises(ValueError, match="rank 0 only"):
        rec.history("grad_norm", rank=1)


def test_a_relative_path_keeps_naming_the_same_directory_after_a_change_of_working_directory(tmp_path, monkeypatch):
    """A notebook's ``%cd`` (os.chdir) mid-run must not send the writer's chunks, nor a reader's looks,
    to a directory of the same name somewhere else."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, record=gs.RecordTo("runs/x", flush_steps=2, flush_seconds=0.05))
    rec = gs.open("runs/x")
    for step in range(8):
        if step == 3:
            monkeypatch.chdir(tmp_path / "elsewhere")
        loss = model(torch.randn(4, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step(loss=loss)
    w.close()
    assert w.errors == [] and not (tmp_path / "elsewhere" / "runs").exists()
    rec.refresh()
    assert rec.steps()["step"].tolist() == list(range(8)) and rec.problems == [] and not rec.live
    assert gs.open(tmp_path / "runs" / "x").step_count == 8
    gs.watch(_mlp(), record=tmp_path / "runs" / "x").close()  # not "being recorded right now": it was closed


def test_a_path_that_holds_another_run_is_refused_by_every_rank_with_the_path_to_change(tmp_path):
    """A job started into a path that holds another run: rank r >= 1 must neither write its shard into
    a one-process recording (it did: runs/x/ranks/1 appeared in it) nor suggest a new shard path."""
    from gradsight.recording.recorder import prepare_directory

    _train(_mlp(), 2, tmp_path / "single").close()
    with pytest.raises(RecordingError, match=r"holds another run \('Sequential(#\d+)?', closed, world size 1\), not "
                                             r"this job of 2 ranks: rank 1 would write its shard into it"):
        prepare_directory(tmp_path / "single", "gs.watch(record=...)", rank=1, world_size=2)
    assert not (tmp_path / "single" / "ranks").exists()
    # an earlier job of the same size, written by other processes: every rank names the job's path
    job = tmp_path / "job"
    _train(_mlp(), 2, job).close()
    manifest = json.loads((job / "manifest.json").read_text())
    manifest.update(world_size=2, writer={"pid": -1, "host": "elsewhere"})
    (job / "manifest.json").write_text(json.dumps(manifest))
    (job / "ranks" / "1").mkdir(parents=True)
    (job / "ranks" / "1" / "manifest.json").write_text(json.dumps(manifest | {"rank": 1, "state": "recording"}))
    os.utime(job / "ranks" / "1" / "manifest.json", (time.time() - 3600, time.time() - 3600))  # untouched: gone
    for rank, state in ((0, "closed"), (1, "ended early: its writer stopped without closing it")):
        with pytest.raises(RecordingError) as err:
            prepare_directory(job, "gs.watch(record=...)", rank=rank, world_size=2)
        said = str(err.value)
        assert f"{str(job)!r} already holds a recording" in said and re.search(f"'Sequential(#\\d+)?', {state}",
                                                                                 said), said
        assert f"record='{job}-2' in every rank" in said and "ranks/1-2" not in said, said


def test_a_directory_that_cannot_be_created_is_a_clear_error_and_leaves_no_hook(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    model = _mlp()
    for where in (tmp_path / "afile" / "run", "/proc/gradsight-run"):  # a file in the way; a read-only place
        with pytest.raises(RecordingError, match=r"cannot write a recording in .*Pass a directory this process can"):
            gs.watch(model, record=where)
        assert all(not m._forward_hooks for m in model.modules())


def test_a_reader_never_mixes_in_a_new_run_written_into_the_same_path(tmp_path):
    """A follower of a run whose directory is deleted and recorded into again (a re-run cell, or
    rm -rf and the script started again): it spliced the new run's later steps onto the old run's
    (no warning), and a query while the directory was gone raised FileNotFoundError."""
    import shutil

    path = tmp_path / "run"
    first = _train(_mlp(), 30, gs.RecordTo(path, flush_steps=5, flush_seconds=0.05))
    rec = gs.open(path)
    deadline = time.monotonic() + 30
    while len(rec.steps()) < 25:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    old = rec.steps()
    rec.poll_seconds = float("inf")  # the reader looks next only when told
    first.close()
    shutil.rmtree(path)
    assert not rec.refresh() and rec.steps().equals(old)  # the directory is gone: nothing new, no error
    second = _train(_mlp(seed=1), 60, gs.RecordTo(path, flush_steps=5, flush_seconds=0.05), seed=7)
    second.close()
    with pytest.warns(GradsightWarning, match=f"now holds another run.*keeps the {len(old)} steps it read"):
        rec.refresh()
    pd.testing.assert_frame_equal(rec.steps(), old)  # only the first run's steps, none of the second's
    assert not rec.live and any("now holds another run" in p for p in rec.problems)
    assert gs.open(path).step_count == 60


def test_a_job_where_only_rank_0_recorded_is_closed_not_ended_early(tmp_path):
    """record= on rank 0 only (a common pattern): rank 1's missing shard is a problem to name, but
    nothing was killed, so the run reads 'closed' (it read 'ended early')."""
    _train(_mlp(), 3, tmp_path / "job").close()
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    (tmp_path / "job" / "manifest.json").write_text(json.dumps(manifest | {"world_size": 2}))
    with pytest.warns(GradsightWarning, match="rank 1 of 2 has no shard"):
        rec = gs.open(tmp_path / "job")
    assert rec.state == "closed" and not rec.live and "closed" in repr(rec)
    assert len(rec.problems) == 1 and "rank 1 of 2 has no shard" in rec.problems[0]
