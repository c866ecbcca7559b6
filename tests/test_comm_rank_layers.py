"""The panel's rank selector switches the per-layer charts (flow, heatmap) to that rank's layers: get_snapshot
carries the rank, the kernel answers from that rank's statistics (a recording of the job holds
every rank's), the pushes keep following it, and a source that holds only its own rank's layers
(a live watcher) answers with those and says so (ranks.layers_rank), never under another label.

The recording is written by a real world-2 gloo job (tests/ranked_recording.py, ~7 s)."""

from __future__ import annotations

import numpy as np
import pytest

import gradsight as gs
from gradsight import bus
from gradsight.comm import payloads
from gradsight.comm.buffers import unpack
from gradsight.comm.schema import validate
from gradsight.comm.session import Session
from gradsight.comm.sources import KernelSources
from gradsight.comm.testing import CheckedComm, FakeRankedWatcher, FakeRegistry, unthrottled_hub
from gradsight.records.metrics import DETAIL_METRICS

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    import ranked_recording

    return ranked_recording.write(tmp_path_factory.mktemp("ddp") / "run")


@pytest.fixture
def rec(job):
    r = gs.open(job)
    yield r
    r.close()


@pytest.fixture
def hub():
    with unthrottled_hub(KernelSources(bus, list)) as h:
        yield h


def _request(comm: CheckedComm, kind: str, **fields) -> tuple[dict, list]:
    comm.deliver({"v": 1, "kind": kind, "id": f"t:{len(comm.sent)}", **fields})
    return comm.last()


def _latest(rec, metric: str, rank: int) -> np.ndarray:
    """The naive answer: the last recorded row of rank's history, in model order (for a detail
    metric, measured every histogram_every steps, its last measured value)."""
    history = rec.history(metric, rank=rank)
    if metric in DETAIL_METRICS:
        history = history.ffill()
    return history.iloc[-1].to_numpy(dtype=np.float64)


def _shown(comm: CheckedComm, msg: dict, buffers: list, metric: str) -> np.ndarray:
    return comm.array(msg["layers"]["columns"][metric], buffers)


def test_rank_1_of_a_ranked_recording_shows_rank_1s_layers_and_the_pushes_keep_it(hub, rec):
    comm = CheckedComm()
    session = Session(comm, hub)
    name = next(w["name"] for w in _request(comm, "hello")[0]["watchers"] if w.get("source") == "recording")
    r0, r1 = _latest(rec, "grad_norm", 0), _latest(rec, "grad_norm", 1)
    assert not np.allclose(r0, r1)  # the job makes the ranks' layers differ: a mix-up cannot pass

    snap, buffers = _request(comm, "get_snapshot", watcher=name, rank=1)
    assert snap["ranks"]["rank"] == 0 and snap["ranks"]["layers_rank"] == 1
    assert snap["ranks"]["per_rank_layers"] is True
    np.testing.assert_allclose(_shown(comm, snap, buffers, "grad_norm"), r1)
    np.testing.assert_allclose(_shown(comm, snap, buffers, "act_std"), _latest(rec, "act_std", 1))

    session.push_update(None)  # a push (a live recording's poller): still rank 1's layers
    push, pbuf = comm.last("snapshot")
    assert push["id"] is None and push["ranks"]["layers_rank"] == 1
    np.testing.assert_allclose(_shown(comm, push, pbuf, "grad_norm"), r1)

    back, bbuf = _request(comm, "get_snapshot", watcher=name)  # no rank: the source's own again
    assert back["ranks"]["layers_rank"] == 0
    np.testing.assert_allclose(_shown(comm, back, bbuf, "grad_norm"), r0)
    session.push_update(None)
    assert comm.last("snapshot")[0]["ranks"]["layers_rank"] == 0

    outside, obuf = _request(comm, "get_snapshot", watcher=name, rank=5)  # world size 2: the own rank's, said
    assert outside["ranks"]["layers_rank"] == 0
    np.testing.assert_allclose(_shown(comm, outside, obuf, "grad_norm"), r0)


def test_a_live_watcher_answers_a_rank_it_does_not_hold_with_its_own_and_says_so():
    reg = FakeRegistry()
    w = reg.watch(FakeRankedWatcher(rank=0, world_size=2))
    reg.step(w, 3)
    comm = CheckedComm()
    with unthrottled_hub(KernelSources(reg, list)) as hub:
        Session(comm, hub)
        snap, buffers = _request(comm, "get_snapshot", watcher="DDP", rank=1)
        layer, _ = _request(comm, "get_layer", watcher="DDP", layer="fc1", rank=1)  # the layer detail too
    assert snap["ranks"]["rank"] == 0 and snap["ranks"]["layers_rank"] == 0
    assert snap["ranks"]["per_rank_layers"] is False
    assert layer["rank"] == 0 and layer["stats"]["grad_norm"] == w.layers()["grad_norm"].iloc[0]
    np.testing.assert_array_equal(_shown(comm, snap, buffers, "grad_norm"), w.layers()["grad_norm"].to_numpy())


def test_layers_of_a_rank_equal_that_rank_s_history(rec):
    """The table the snapshot reads (layers(rank=)) against the naive history read, for every
    non-detail metric and both ranks; a wrong rank is a clear error."""
    for r in (0, 1):
        table = rec.layers(rank=r)
        for metric in ("grad_norm", "act_norm", "act_std", "grad_nan"):
            np.testing.assert_allclose(table[metric].to_numpy(dtype=np.float64), _latest(rec, metric, r))
    with pytest.raises(ValueError, match="ranks 0..1"):
        rec.layers(rank=2)


def test_payload_of_a_one_process_source_ignores_the_rank():
    reg = FakeRegistry()
    from gradsight.comm.testing import FakeWatcher

    w = reg.watch(FakeWatcher())
    reg.step(w, 2)
    msg, _ = payloads.snapshot(w, rank=1)
    validate(msg)
    assert "ranks" not in msg and msg["layers"]["names"] == ["fc1", "act", "fc2"]


def test_the_heatmap_of_a_rank_is_that_rank_s_history_asked_over_the_comm(hub, rec):
    import ranked_recording

    comm = CheckedComm()
    Session(comm, hub)
    try:
        name = next(s.name for s in hub.sources.watchers() if getattr(s, "recording", None) is rec)
        for rank in (0, 1):
            comm.deliver({"v": 1, "kind": "get_heatmap", "id": f"t:{rank}", "watcher": name, "rank": rank})
            msg, buffers = comm.last("heatmap")
            assert msg["rank"] == rank and msg["metric"] == "grad_norm" and msg["id"] == f"t:{rank}"
            hist = rec.history("grad_norm", rank=rank)
            np.testing.assert_array_equal(unpack(msg["values"], buffers), hist.to_numpy().T)
            nonfinite = unpack(msg["nonfinite"], buffers)
            # rank 1's NaN batch: every layer of rank 1 at that step (gradients w.r.t. outputs are
            # local, and on_nonfinite="skip" kept the weights finite), nothing of rank 0's
            expected = np.zeros_like(nonfinite)
            if rank == 1:
                expected[:, ranked_recording.NAN_STEP] = 1
            np.testing.assert_array_equal(nonfinite, expected)
        # act_std is measured on detail steps only: the steps where no layer has it are left out
        # (a non-finite step stays, whatever it measured), and counted
        comm.deliver({"v": 1, "kind": "get_heatmap", "id": "t:a", "watcher": name, "metric": "act_std", "rank": 1})
        msg, buffers = comm.last("heatmap")
        hist = rec.history("act_std", rank=1)
        bad = sum(rec.history(f"act_{k}", rank=1) for k in ("nan", "posinf", "neginf")) > 0
        kept = hist.notna().any(axis=1) | bad.any(axis=1)
        assert 0 < kept.sum() < len(hist) and kept[ranked_recording.NAN_STEP]
        np.testing.assert_array_equal(unpack(msg["values"], buffers), hist[kept].to_numpy().T)
        np.testing.assert_array_equal(unpack(msg["steps"], buffers), hist.index[kept].to_numpy())
        assert msg["skipped_steps"] == len(hist) - kept.sum() and msg["total_steps"] == kept.sum()
    finally:
        comm.close()


# --- the layer detail (histograms, latest statistics, unit activity) of a rank --------------------
def _first(rec, kind: str) -> str:
    """The first layer of this type (a Linear has weights; a ReLU keeps unit activity)."""
    table = rec.layers()
    return str(table.loc[table["type"] == kind, "layer"].iloc[0])


def test_histograms_and_units_of_a_rank_are_that_rank_s_shard_read_with_pandas(rec, job):
    """rec.histogram(..., rank=r), histogram_steps and unit_history against the naive read: rank r's
    shard's Parquet tables opened with pandas (rank 0 in the top directory, rank r in ranks/<r>/)."""
    import pandas as pd

    linear, relu = _first(rec, "Linear"), _first(rec, "ReLU")
    latest = {}
    for r, shard in ((0, job), (1, job / "ranks" / "1")):
        table = pd.read_parquet(shard / "histograms")
        for layer, of in ((linear, "grad"), (linear, "activation"), (linear, "weight"), (relu, "grad")):
            rows = table[(table["layer"] == layer) & (table["of"] == of)].sort_values("step")
            assert len(rows) > 1
            assert rec.histogram_steps(layer, of, rank=r) == rows["step"].tolist()
            for row in rows.to_dict("records"):
                h = rec.histogram(layer, of=of, step=row["step"], rank=r)
                np.testing.assert_array_equal(h.edges, row["edges"])
                np.testing.assert_array_equal(h.counts, row["counts"])
                assert (h.nan, h.posinf, h.neginf, h.zero) == (row["nan"], row["posinf"], row["neginf"], row["zero"])
            latest[r, layer, of] = rec.histogram(layer, of=of, rank=r)
            assert latest[r, layer, of].step == rows["step"].iloc[-1]
        units = pd.read_parquet(shard / "units")
        units = units[units["layer"] == relu].sort_values("step")
        got = rec.unit_history(relu, rank=r)
        assert got.index.tolist() == units["step"].tolist()[-len(got):] and len(got) > 1
        np.testing.assert_array_equal(got.to_numpy(), np.stack(units["values"].to_numpy()[-len(got):]))
    # rank 1's inputs are 100x rank 0's: a rank mix-up cannot pass
    assert not np.array_equal(latest[0, linear, "activation"].edges, latest[1, linear, "activation"].edges)
    # without rank=: the source's own (rank 0), as before
    np.testing.assert_array_equal(rec.histogram(linear, of="grad").counts, latest[0, linear, "grad"].counts)
    with pytest.raises(ValueError, match="ranks 0..1"):
        rec.histogram(linear, rank=2)
    with pytest.raises(ValueError, match="ranks 0..1"):
        rec.unit_history(relu, rank=-1)


def test_a_one_process_watcher_refuses_another_rank_s_histograms_clearly():
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    w = gs.watch(model, name="one", histogram_every=1)
    try:
        model(torch.randn(2, 4)).sum().backward()
        w.step()
        assert w.histogram("0", rank=0).step == w.histogram("0").step  # its own rank: the same
        with pytest.raises(ValueError, match="not part of a torch.distributed job"):
            w.histogram("0", rank=1)
        with pytest.raises(ValueError, match="not part of a torch.distributed job"):
            w.unit_history("1", rank=1)
    finally:
        w.close()


def _hist_totals(comm: CheckedComm, series: list, buffers: list) -> list[float]:
    return [float(comm.array(h["counts"], buffers).sum()) for h in series]


def test_the_layer_detail_of_rank_1_is_rank_1_s_over_the_comm_and_in_the_pushes(hub, rec):
    comm = CheckedComm()
    session = Session(comm, hub)
    name = next(w["name"] for w in _request(comm, "hello")[0]["watchers"] if w.get("source") == "recording")
    layer = _first(rec, "Linear")
    i = rec.layer_names.index(layer)
    top = {}
    for rank in (1, 0):
        msg, buffers = _request(comm, "get_layer", watcher=name, layer=layer, rank=rank)
        assert msg["kind"] == "layer" and msg["rank"] == rank
        expected = rec.layers(rank=rank).iloc[i]
        for metric in ("grad_norm", "act_norm", "param_norm"):
            assert msg["stats"][metric] == pytest.approx(expected[metric], rel=1e-12)
        for of in ("grad", "activation", "weight"):
            series = msg["histograms"][of]
            steps = rec.histogram_steps(layer, of, rank=rank)[-len(series):]
            assert [h["step"] for h in series] == steps and len(steps) > 1
            naive = [rec.histogram(layer, of=of, step=s, rank=rank) for s in steps]
            assert [(h["nan"], h["zero"], h["posinf"]) for h in series] == [(n.nan, n.zero, n.posinf) for n in naive]
            # regridding onto the series' common grid keeps every count
            np.testing.assert_allclose(_hist_totals(comm, series, buffers), [float(n.counts.sum()) for n in naive])
        top[rank] = float(np.abs(comm.array(msg["histograms"]["activation"][-1]["edges"], buffers)).max())
    assert top[1] > 10 * top[0]  # rank 1's activations are 100x rank 0's: the grids show it

    # the pushes carry the rank get_snapshot chose, for the followed layer
    _request(comm, "get_snapshot", watcher=name, rank=1)
    _request(comm, "get_layer", watcher=name, layer=layer, rank=1)
    session.push_update(None)
    push, pbuf = comm.last("layer")
    assert push["id"] is None and push["rank"] == 1
    assert push["stats"]["grad_norm"] == pytest.approx(rec.layers(rank=1).iloc[i]["grad_norm"], rel=1e-12)
    _request(comm, "get_snapshot", watcher=name)  # back to the source's own rank
    session.push_update(None)
    assert comm.last("layer")[0]["rank"] == 0

    outside, _ = _request(comm, "get_layer", watcher=name, layer=layer, rank=5)  # world size 2: its own, said
    assert outside["rank"] == 0
    comm.close()


def test_a_one_process_layer_reply_has_no_rank():
    from gradsight.comm.testing import FakeWatcher

    reg = FakeRegistry()
    w = reg.watch(FakeWatcher())
    reg.step(w, 2)
    msg, _ = payloads.layer(w, "fc1", 4, rank=1)
    validate(msg)
    assert "rank" not in msg
