"""The panel's compare (two sources side by side) and rank dimension, at the comm level: the
messages a panel gets, checked against the schema and against naive re-readings of the sources."""

from __future__ import annotations

import faulty_models as fm
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import gradsight as gs
from gradsight.comm import payloads
from gradsight.comm.hub import Hub
from gradsight.comm.schema import validate
from gradsight.comm.session import Session
from gradsight.comm.sources import KernelSources
from gradsight.comm.testing import FakeComm, FakeRankedWatcher, FakeRegistry, FakeWatcher


def _session(reg) -> FakeComm:
    comm = FakeComm()
    Session(comm, Hub(KernelSources(reg, lambda: [])))
    return comm


def _ask(comm: FakeComm, kind: str, **fields) -> tuple[dict, list]:
    comm.deliver({"v": 1, "kind": kind, "id": f"r{len(comm.sent)}", **fields})
    msg, buffers = comm.sent[-1]
    validate(msg)
    return msg, buffers


def _finding(**kw):
    row = dict(step=1, last_step=1, count=1, layer="fc1", kind="dead_units", severity="warning", message="m")
    row.update(kw)
    return row


# -- compare ---------------------------------------------------------------------------------------
def test_compare_shows_both_runs_on_the_union_of_their_layers():
    reg = FakeRegistry()
    a = reg.watch(FakeWatcher("A", layers=("fc1", "act", "fc2")))
    b = reg.watch(FakeWatcher("B", layers=("fc1", "fc2", "fc3")))
    reg.step(a, 3)
    reg.step(b, 5)
    b.add_finding(**_finding(step=4, layer="fc3", kind="nan_origin", severity="error"))
    comm = _session(reg)
    msg, buffers = _ask(comm, "get_compare", watcher="A", other="B")
    assert msg["kind"] == "compare" and msg["metric"] == "grad_norm"
    assert msg["layers"] == ["fc1", "act", "fc2", "fc3"]  # A's order, then what only B has
    ra, rb = msg["runs"]
    assert (ra["label"], rb["label"]) == ("A: A", "B: B")
    assert ra["flow"]["names"] == ["fc1", "act", "fc2"] and rb["flow"]["names"] == ["fc1", "fc2", "fc3"]
    for run, w in ((ra, a), (rb, b)):
        np.testing.assert_array_equal(comm.array(run["flow"]["values"], buffers), w.layers()["grad_norm"])
        np.testing.assert_array_equal(comm.array(run["steps"]["columns"]["loss"], buffers), w.steps()["loss"])
        assert run["last_step"] == w.step_count - 1
    assert ra["findings"]["total"] == 0
    assert [(f["kind"], f["layer"]) for f in rb["findings"]["rows"]] == [("nan_origin", "fc3")]


def test_compare_reads_only_and_pushes_keep_following_the_panels_source():
    reg = FakeRegistry()
    a = reg.watch(FakeWatcher("A"))
    reg.watch(FakeWatcher("B"))
    comm = FakeComm()
    Session(comm, Hub(KernelSources(reg, lambda: []), min_interval=0.0, max_share=None))
    _ask(comm, "get_snapshot", watcher="A")
    msg, _ = _ask(comm, "get_compare", watcher="A", other="B", metric="act_mean")
    assert msg["metric"] == "act_mean"
    comm.sent.clear()
    reg.step(a)
    assert comm.last("snapshot")[0]["watcher"]["name"] == "A"


def test_compare_with_an_unknown_source_is_not_found():
    reg = FakeRegistry()
    reg.watch(FakeWatcher("A"))
    msg, _ = _ask(_session(reg), "get_compare", watcher="A", other="nope")
    assert msg["kind"] == "error" and msg["code"] == "not_found" and "nope" in msg["message"]


def _train(name: str, widths: tuple[int, ...], nan_at: int | None = None, steps: int = 6, path=None):
    torch.manual_seed(0)
    mods: list[nn.Module] = []
    for i, o in zip(widths[:-1], widths[1:], strict=True):
        mods += [nn.Linear(i, o), nn.Tanh()]
    model = nn.Sequential(*mods[:-1])
    seen = iter(range(steps))

    def batch(gen):
        x = torch.randn(8, widths[0], generator=gen)
        if next(seen) == nan_at:
            x[0, 0] = float("nan")
        return x, None

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return fm.train(model, opt, batch, steps, lambda out, _: out.pow(2).mean(),
                    watch={"name": name, "record": path}).watcher


def _naive(run) -> tuple[list[str], dict[str, float]]:
    """Leaf layers and their grad_norm at the last step, read straight from the source."""
    df = run.layers()
    names = [str(n) for n in df["layer"]]
    leaves = [n for n in names if n and not any(m.startswith(n + ".") for m in names)]
    return leaves, {n: float(v) for n, v in zip(names, df["grad_norm"], strict=True)}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compare_of_a_live_watcher_and_a_recording_matches_the_sources(tmp_path):
    pytest.importorskip("pyarrow")
    b_live = _train("B", (4, 8, 8, 1), nan_at=4, path=tmp_path / "b")
    b_live.close()
    rec = gs.open(tmp_path / "b")
    a = _train("A", (4, 8, 1))
    try:
        sources = KernelSources()
        names = [s.name for s in sources.watchers()]
        b_name = next(n for n in names if n.startswith("B ["))
        comm = FakeComm()
        session = Session(comm, Hub(sources))  # subscribed to the real registry until closed
        try:
            msg, buffers = _ask(comm, "get_compare", watcher="A", other=b_name)
        finally:
            session.close()
        ra, rb = msg["runs"]
        for run, src in ((ra, a), (rb, rec)):
            leaves, values = _naive(src)
            assert run["flow"]["names"] == leaves
            got = comm.array(run["flow"]["values"], buffers)
            np.testing.assert_array_equal(got, [values[n] for n in leaves])
            np.testing.assert_array_equal(comm.array(run["steps"]["columns"]["loss"], buffers),
                                          src.steps()["loss"].to_numpy(dtype=float))
            assert run["findings"]["total"] == len(src.findings())
        assert msg["layers"] == _naive(a)[0] + [n for n in _naive(rec)[0] if n not in _naive(a)[0]]
        assert rb["watcher"]["source"] == "recording"
        # B went non-finite and A did not: B's findings name it, and its flow counts the bad values
        assert any(f["severity"] == "error" for f in rb["findings"]["rows"])
        assert not any(f["severity"] == "error" for f in ra["findings"]["rows"])
        assert comm.array(rb["flow"]["nonfinite"], buffers).sum() > 0
        assert comm.array(ra["flow"]["nonfinite"], buffers).sum() == 0
    finally:
        a.close()
        rec.close()


# -- ranks -----------------------------------------------------------------------------------------
def _ranked() -> tuple[FakeRegistry, FakeRankedWatcher]:
    reg = FakeRegistry()
    w = reg.watch(FakeRankedWatcher("DDP", world_size=3, rank=0))
    reg.step(w, 8)
    w.add_finding(rank=0, **_finding(step=3, kind="vanishing_gradient"))
    # step 7: rank 0's own detector sees the NaN the all-reduce brought in (its layer comes first
    # in model order, so it is listed first); rank 2 is the one that produced it
    w.add_finding(rank=0, **_finding(step=7, layer="fc1", kind="nan_origin", severity="error"))
    w.add_finding(rank=2, **_finding(step=7, layer="fc2", kind="rank_nonfinite", severity="error"))
    w.add_finding(rank=-1, **_finding(step=8, layer=None, kind="replica_divergence", severity="error"))
    return reg, w


def test_snapshot_of_a_rank_carries_the_ranks_table_and_the_rank_that_went_wrong_first():
    reg, w = _ranked()
    comm = _session(reg)
    msg, buffers = _ask(comm, "get_snapshot", watcher="DDP")
    ranks = msg["ranks"]
    assert (ranks["world_size"], ranks["rank"]) == (3, 0)
    assert ranks["first_bad"] == {"rank": 2, "step": 7, "kind": "rank_nonfinite", "layer": "fc2"}
    table = w.ranks()
    for col in ("rank", "step_s", "backward_s", "findings"):
        np.testing.assert_array_equal(comm.array(ranks["columns"][col], buffers), table[col].to_numpy(dtype=float))
    assert [f["rank"] for f in msg["findings"]["rows"]] == [0, 0, 2, None]  # -1: unknown rank


def test_pushes_of_a_rank_carry_the_rank_part_and_a_single_process_has_none():
    reg, w = _ranked()
    plain = reg.watch(FakeWatcher("MLP"))
    comm = FakeComm()
    hub = Hub(KernelSources(reg, lambda: []), min_interval=0.0, max_share=None)
    Session(comm, hub)
    _ask(comm, "get_snapshot", watcher="DDP")
    reg.step(w)
    pushed = [m for m, _ in comm.sent if m["kind"] == "snapshot" and m["id"] is None]
    assert pushed and pushed[-1]["ranks"]["first_bad"]["rank"] == 2
    msg, _ = _ask(comm, "get_snapshot", watcher="MLP")
    assert "ranks" not in msg
    assert plain.step_count == 0


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([], None),
        ([_finding(severity="warning")], None),  # no rank column at all
        # the NaN rank 1 produced reached rank 0 in the same step: rank_nonfinite names its origin
        ([dict(_finding(step=7, severity="error", kind="nan_origin"), rank=0),
          dict(_finding(step=7, severity="error", kind="rank_nonfinite", layer="fc2"), rank=1)], 1),
        # but an error steps earlier came first, whatever its kind
        ([dict(_finding(step=2, severity="error", kind="nan_origin"), rank=1),
          dict(_finding(step=5, severity="error", kind="rank_nonfinite"), rank=0)], 1),
        ([dict(_finding(step=2, severity="warning"), rank=1),
          dict(_finding(step=4, severity="error", kind="nan_origin"), rank=3),
          dict(_finding(step=6, severity="error", kind="exploding_gradient"), rank=0)], 3),
        ([dict(_finding(step=2, severity="error"), rank=-1)], None),
        ([dict(_finding(step=3, severity="error", kind="replica_divergence", layer=None), rank=1)], 1),
    ],
)
def test_first_bad_rank(rows, expected):
    got = payloads.first_bad_rank(pd.DataFrame(rows))
    assert (got["rank"] if got else None) == expected
    if got is not None:
        assert got["layer"] in (None, *(r["layer"] for r in rows))  # never the text "None"


def test_a_rank_table_that_fails_leaves_the_rest_of_the_snapshot():
    reg, w = _ranked()

    def broken():
        raise ValueError("rank 1's shard is truncated")

    w.ranks = broken
    msg, _ = _ask(_session(reg), "get_snapshot", watcher="DDP")
    assert msg["kind"] == "snapshot" and "ranks" not in msg and msg["findings"]["total"] == 4
