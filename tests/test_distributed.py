"""gradsight inside torch.distributed jobs: gloo on CPU, ``torch.multiprocessing.spawn`` with a
``file://`` rendezvous (no ports). Each scenario runs in real processes; each rank writes what it
saw to a pickle, and the test asserts on every rank's view.
"""

from __future__ import annotations

import faulthandler
import gc
import pickle
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import gradsight as gs
from gradsight.distributed.comm_timer import average
from gradsight.warnings import GradsightWarning

# --- harness -------------------------------------------------------------------------------
TMP = ""  # the job's shared directory (set in each process)
HANG_S = 120  # a scenario still running after this long is hung: its process exits with tracebacks


def _entry(rank: int, world: int, tmp: str, scenarios: list[str]) -> None:
    """One process of the job: every scenario in turn (one spawn per world size keeps the file fast:
    starting the processes costs more than the scenarios), each one's outcome or traceback saved."""
    torch.set_num_threads(1)
    global TMP
    TMP = tmp
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    results = {}
    try:
        for name in scenarios:
            faulthandler.dump_traceback_later(HANG_S, exit=True)  # a hang fails the test instead of stalling it
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    out = SCENARIOS[name](rank, world)
                out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, GradsightWarning)]
            except Exception:
                out = {"crashed": traceback.format_exc()}
            results[name] = out
            dist.barrier()  # scenarios never overlap
            faulthandler.cancel_dump_traceback_later()
        with open(f"{tmp}/rank{rank}.pkl", "wb") as f:
            pickle.dump(results, f)
    finally:
        dist.barrier()  # without it gloo sometimes aborts at teardown
        dist.destroy_process_group()


def _spawn(tmp: Path, scenarios: list[str], world: int) -> dict[str, list[dict]]:
    mp.spawn(_entry, args=(world, str(tmp), scenarios), nprocs=world, join=True)
    per_rank = []
    for r in range(world):
        with open(tmp / f"rank{r}.pkl", "rb") as f:
            per_rank.append(pickle.load(f))
    return {name: [p[name] for p in per_rank] for name in scenarios}


class MLP(nn.Module):
    def __init__(self, sleep_rank: int = -1):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 4)
        self.sleep_rank = sleep_rank

    def forward(self, x):
        if dist.get_rank() == self.sleep_rank:
            time.sleep(0.03)
        return self.fc2(self.act(self.fc1(x)))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(16, 8, generator=g), torch.randn(16, 4, generator=g)


def _ddp(seed: int = 0, **kw) -> nn.parallel.DistributedDataParallel:
    torch.manual_seed(seed)
    return nn.parallel.DistributedDataParallel(MLP(**kw))


def _train(model, opt, rank: int, steps: int, poison=None, after_step=None) -> None:
    for step in range(steps):
        x, y = _batch(rank, step)
        if poison is not None and poison == (rank, step):
            x[3, 2] = float("nan")
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if after_step is not None:
            after_step(step)


def _result(w) -> dict:
    return {"findings": w.findings(), "ranks": w.ranks(), "errors": list(w.errors),
            "step_s": w.history("step_s", rank=1), "rank": w.rank, "world": w.world_size}


# --- scenarios (run in every rank) ---------------------------------------------------------
def healthy(rank, world):
    plain = _ddp()
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    _train(plain, opt, rank, 30)
    watched = _ddp()
    opt = torch.optim.SGD(watched.parameters(), lr=0.1)
    w = gs.watch(watched, optimizer=opt, checksum_every=3)
    _train(watched, opt, rank, 30)  # more than the straggler's window: it is judged, and silent
    out = _result(w)
    out["identical"] = all(torch.equal(a, b) for a, b in zip(plain.parameters(), watched.parameters(), strict=True))
    return out


def nan_rank1_step7(rank, world):
    model = _ddp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt)
    _train(model, opt, rank, 10, poison=(1, 7))
    return _result(w)


def skipped_bucket(rank, world):
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(MLP(), bucket_cap_mb=1e-4)  # one bucket per parameter
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = set()

    def hook(state, bucket):
        if dist.get_rank() == 1 and bucket.index() == 0:  # joins the all-reduce, keeps its own gradient
            skipped.update(names[id(p)] for p in bucket.parameters())  # DDP re-buckets after step 0
            buf = bucket.buffer()
            return dist.all_reduce(buf.clone(), async_op=True).get_future().then(lambda _: buf)
        return average(state, bucket)

    model.register_comm_hook(None, gs.timed(hook))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt, checksum_every=2)
    _train(model, opt, rank, 6)
    out = _result(w)
    out["skipped"] = sorted(skipped)
    return out


def changed_param(rank, world):
    model = _ddp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt, checksum_every=2)

    def nudge(step):
        if step == 4 and rank == 1:
            with torch.no_grad():
                model.module.fc1.bias[0] += 1e-3

    _train(model, opt, rank, 9, after_step=nudge)
    return _result(w)


def straggler(rank, world):
    model = _ddp(sleep_rank=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt)
    _train(model, opt, rank, 30)
    return _result(w)


def fsdp2_norms(rank, world):
    import copy

    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    ref = MLP()
    sharded = copy.deepcopy(ref)
    fully_shard(sharded.fc1)
    fully_shard(sharded.fc2)
    fully_shard(sharded)
    o_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    o_sh = torch.optim.SGD(sharded.parameters(), lr=0.1)
    w_ref = gs.watch(ref, optimizer=o_ref, histogram_every=1, name="ref")
    w_sh = gs.watch(sharded, optimizer=o_sh, histogram_every=1, name="sharded")
    for step in range(4):
        xs, ys = zip(*(_batch(r, step) for r in range(world)), strict=True)
        o_ref.zero_grad()  # unsharded: the whole global batch; mean of the ranks' means = the global mean
        nn.functional.mse_loss(ref(torch.cat(xs)), torch.cat(ys)).backward()
        o_ref.step()
        o_sh.zero_grad()
        nn.functional.mse_loss(sharded(xs[rank]), ys[rank]).backward()
        o_sh.step()
    local = [p.to_local().numel() for p in sharded.parameters()]
    return {m: (w_ref.history(m), w_sh.history(m)) for m in ("param_norm", "param_grad_norm", "update_norm")} | {
        "local_numel": local, "errors": list(w_sh.errors) + list(w_ref.errors),
        "findings": w_sh.findings()}


class DeepSpeedEngine(nn.Module):
    """Stands in for deepspeed's engine (matched by class name; DeepSpeed is not installed here)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def opaque_wrapper(rank, world):
    torch.manual_seed(rank)  # partitions differ per rank: not replicas, must not be compared as such
    model = DeepSpeedEngine(MLP())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt, checksum_every=1)
    _train(model, opt, rank, 3)
    return _result(w)


def different_models(rank, world):
    """Ranks watching different models (as pipeline stages do): the exchange stops on every rank
    at its first step, training goes on; and a watcher on one rank only, with distributed=False."""
    torch.manual_seed(0)
    model = MLP() if rank == 0 else nn.Sequential(MLP(), nn.Linear(4, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt)
    _train(model, opt, rank, 3)
    out = {"errors": list(w.errors), "steps": w.steps()["step"].tolist()}
    w.close()
    ddp = _ddp()
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    solo = gs.watch(ddp, optimizer=opt, distributed=False) if rank == 0 else None
    _train(ddp, opt, rank, 3)
    out["solo_steps"] = solo.steps()["step"].tolist() if solo is not None else None
    return out


def only_rank0_watches(rank, world):
    """gs.watch on rank 0 only, with the default distributed=True: the handshake finds rank 1 missing."""
    from gradsight.distributed import handshake

    handshake.TIMEOUT = 1.0  # the default 5 s, shortened to keep the test fast
    model = _ddp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt) if rank == 0 else None
    _train(model, opt, rank, 4)
    if w is None:
        return {}
    out = {"steps": w.steps()["step"].tolist(), "errors": list(w.errors), "rank": w.rank, "world": w.world_size}
    with pytest.raises(ValueError, match="did not call gs.watch") as exc:
        w.ranks()
    out["ranks_error"] = str(exc.value)
    return out


def _all_reduce_grads(model) -> None:
    """DDP's averaging by hand (a DDP wrapper cannot follow a layer added mid-run)."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def edit_midrun(rank, world):
    """Every rank adds a layer after step 2: the cross-rank part re-lays out its packet on every rank
    together; the new layer's parameters are checksummed (rank 1 then nudges one: replica_divergence)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    w = gs.watch(model, checksum_every=1)
    for step in range(7):
        if step == 3:
            torch.manual_seed(1)
            model.append(nn.Linear(4, 4))  # on every rank, the same weights
        if step == 5 and rank == 1:
            with torch.no_grad():
                model[3].bias[0] += 1e-3
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = _batch(rank, step)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        _all_reduce_grads(model)
        opt.step()
        w.step()
    return _result(w) | {"layers": w.layer_names}


def edit_one_rank(rank, world):
    """Rank 1 adds a module while its step 2 is open (the step is dropped there, not on rank 0), then
    watches a model rank 0 does not have: every rank stops the exchange together, nobody hangs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt, checksum_every=1000)  # ranks train apart (no gradient sync)
    for step in range(5):
        x, y = _batch(rank, step)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        if step == 2 and rank == 1:
            model.add_module("extra", nn.Identity())
        opt.step()
    return {"steps": w.steps()["step"].tolist(), "errors": list(w.errors), "ranks": w.ranks()}


def ranked_recording(rank, world):
    """Every rank records into the same path: one run with a rank dimension (rank 1 gets a NaN at step 4)."""
    model = _ddp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt, record=gs.RecordTo(f"{TMP}/ranked", flush_steps=3))
    _train(model, opt, rank, 8, poison=(1, 4))
    w.close()
    w.save(f"{TMP}/saved")  # w.save in every rank: the same layout, written once
    return _result(w) | {"grad_norm": w.history("grad_norm"), "steps": w.steps(), "path": f"{TMP}/ranked",
                         "rank_metrics": {(m, r): w.history(m, rank=r) for m in gs_rank_metrics()
                                          for r in range(world)}}


def nan_cross_off(rank, world):
    """DDP with the cross-rank part off: rank 1's NaN reaches rank 0 through the all-reduce; rank 0 cannot
    know who, and must not claim the weight was changed outside the training step."""
    model = _ddp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt, distributed=False)
    _train(model, opt, rank, 4, poison=(1, 2))
    return {"findings": w.findings(), "errors": list(w.errors)}


def close_early(rank, world):
    """Ranks training apart (no DDP): rank 0 closes its watcher after step 3 while rank 1 trains 3 more
    steps; then rank 0's second watcher is garbage-collected after step 1 while rank 1 trains on."""
    def run(steps_of, stop):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        w = gs.watch(model, optimizer=opt)
        t0 = time.monotonic()
        for step in range(steps_of[rank]):
            x, y = _batch(rank, step)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            if rank == 0 and step == steps_of[0] - 1:
                out = {"steps": w.steps()["step"].tolist(), "errors": list(w.errors)}
                stop(w)
                del w, model, opt
                gc.collect()
                return out | {"s": time.monotonic() - t0}
        return {"steps": w.steps()["step"].tolist(), "errors": list(w.errors), "ranks": w.ranks(),
                "s": time.monotonic() - t0}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        closed = run((4, 7), lambda w: w.close())
    said = [str(m.message) for m in caught if issubclass(m.category, GradsightWarning)]
    collected = run((2, 5), lambda w: None)  # no close: the last reference goes, the watcher is collected
    return {"closed": closed, "closed_warnings": said, "collected": collected}


def rewatch(rank, world):
    """A notebook re-running its watch cell 6 times in one job (each watch closes the previous watcher):
    each watcher's gloo group is destroyed once every rank is done with it, instead of piling up."""
    import os

    from torch.distributed import distributed_c10d as c10d

    def count():
        return len(c10d._world.pg_map), len(os.listdir("/proc/self/task"))

    model = _ddp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = count()
    judged, sizes, t0 = [], [], time.monotonic()
    for _ in range(6):
        w = gs.watch(model, optimizer=opt)
        _train(model, opt, rank, 2)
        judged.append(int(w.ranks()["steps"].min()))
        sizes.append(count())
    w.close()
    return {"before": before, "sizes": sizes, "judged": judged, "errors": list(w.errors),
            "s": time.monotonic() - t0}


def gs_rank_metrics():
    from gradsight.records.queries import RANK_METRICS

    return RANK_METRICS


SCENARIOS = {f.__name__: f for f in (healthy, nan_rank1_step7, skipped_bucket, changed_param, straggler,
                                     fsdp2_norms, opaque_wrapper, different_models, only_rank0_watches,
                                     edit_midrun, edit_one_rank, ranked_recording, nan_cross_off, close_early, rewatch)}


WORLD2 = ["healthy", "skipped_bucket", "changed_param", "straggler", "fsdp2_norms", "opaque_wrapper",
          "different_models", "only_rank0_watches", "edit_midrun", "edit_one_rank", "ranked_recording",
          "nan_cross_off", "close_early", "rewatch"]


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    return _spawn(tmp_path_factory.mktemp("world2"), WORLD2, 2)


@pytest.fixture(scope="module")
def world4(tmp_path_factory):
    return _spawn(tmp_path_factory.mktemp("world4"), ["healthy", "nan_rank1_step7"], 4)


def _outs(results, name):
    outs = results[name]
    for r, out in enumerate(outs):
        assert "crashed" not in out, f"rank {r} crashed in {name}:\n{out['crashed']}"
    return outs


def _only(findings, kind: str):
    """The one finding of ``kind`` (fails if there is none or several)."""
    rows = findings[findings["kind"] == kind]
    assert len(rows) == 1, findings
    return rows.iloc[0]


def _serious(df):
    return df[df["severity"].isin(["error", "warning"])]


# --- tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [2, 4])
def test_healthy_ddp_is_silent_bit_identical_and_timed(world, request):
    for r, out in enumerate(_outs(request.getfixturevalue(f"world{world}"), "healthy")):
        assert out["identical"], f"rank {r}: watched DDP training differs from unwatched"
        assert out["errors"] == [] and out["warnings"] == [], (out["errors"], out["warnings"])
        assert _serious(out["findings"]).empty, out["findings"]
        assert (out["findings"]["rank"] == r).all()
        ranks = out["ranks"]
        assert list(ranks["rank"]) == list(range(world)) and (ranks["steps"] == 30).all()
        assert (ranks[["step_s", "forward_s", "backward_s", "allreduce_s"]] > 0).all().all(), ranks
        assert (ranks["findings"] == 0).all() and (ranks["first_nonfinite_step"] == -1).all()
        assert list(out["step_s"].index) == list(range(30)) and (out["step_s"]["step_s"] > 0).all()


@pytest.mark.slow  # a third spawn (~40 s): make test-slow runs it
def test_healthy_ddp_is_bit_identical_at_a_world_size_not_a_power_of_two(tmp_path):
    """DDP's built-in reduction multiplies by 1/world; dividing (torch's Python allreduce_hook) differs
    in the last bit at world 3: gradsight's timed default hook must do what DDP does."""
    outs = _outs(_spawn(tmp_path, ["healthy"], 3), "healthy")
    assert all(out["identical"] for out in outs)


def test_nan_batch_on_rank_1_at_step_7_names_rank_1(world4):
    for out in _outs(world4, "nan_rank1_step7"):
        row = _only(out["findings"], "rank_nonfinite")
        assert (row["rank"], row["step"], row["layer"]) == (1, 7, "module.fc1"), row
        assert "rank 1 produced the first non-finite value at step 7" in row["message"]
        assert "ranks 0, 2, 3 were finite" in row["message"]
        ranks = out["ranks"].set_index("rank")
        assert ranks.loc[1, "first_nonfinite_step"] == 7
        assert all(ranks.loc[k, "first_nonfinite_step"] == 8 for k in (0, 2, 3))  # spread, not origin
        assert ranks.loc[1, "findings"] >= 1
        assert any("rank_nonfinite" in m for m in out["warnings"])


def test_ranks_poisoned_through_the_all_reduce_say_so_at_the_step_it_happened(world4):
    """Rank 1's NaN batch at step 7 reaches ranks 0, 2, 3 in DDP's all-reduce, after gradsight read their
    (finite) gradients, and their optimizer step writes NaN weights. Their nan_origin says so at step 7,
    naming rank 1 — never that a weight 'was changed outside the training step' at step 8."""
    for r, out in enumerate(_outs(world4, "nan_rank1_step7")):
        nan = out["findings"][out["findings"]["kind"] == "nan_origin"]
        assert not nan["message"].str.contains("outside the training step").any(), nan["message"].tolist()
        if r == 1:  # the origin rank: its own batch
            assert nan["step"].tolist() == [7] and "input of" in nan.iloc[0]["message"], nan["message"].tolist()
            continue
        row = _only(nan, "nan_origin")
        assert (row["step"], row["rank"], row["severity"], row["layer"]) == (7, r, "error", ""), row
        assert "This rank's forward and backward were finite at step 7, but rank 1 produced" in row["message"]
        assert "all-reduce" in row["message"] and "wrote them into the weights" in row["message"]
        assert "Debug rank 1" in row["hint"]


def test_with_the_cross_rank_part_off_a_poisoned_rank_blames_the_all_reduce_not_an_edit(world2):
    out = _outs(world2, "nan_cross_off")[0]
    row = _only(out["findings"], "nan_origin")
    assert row["step"] == 3 and "through the all-reduce" in row["message"], row["message"]
    assert "changed outside the training step" not in row["message"] and out["errors"] == []


def test_a_weight_set_to_nan_by_hand_between_steps_is_changed_outside_the_training_step():
    """The single-process reading that a poisoned DDP rank must not get: here it is the truth."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gs.watch(model, optimizer=opt) as w, warnings.catch_warnings():
        warnings.simplefilter("ignore", GradsightWarning)
        for step in range(4):
            if step == 2:
                with torch.no_grad():
                    model[0].weight[0, 0] = float("nan")
            x, y = _batch(0, step)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        row = _only(w.findings(), "nan_origin")
    assert row["step"] == 2 and "changed outside the training step" in row["message"], row["message"]


def test_a_rank_that_stops_watching_never_stalls_the_others(world2):
    """Rank 0 closes after step 3 (then, in a second run, its watcher is garbage-collected after step 1)
    while rank 1 goes on: rank 1's next exchange receives rank 0's farewell packet, so it drops the
    cross-rank part with one warning instead of waiting forever, and its training and capture go on."""
    outs = _outs(world2, "close_early")
    zero, one = outs[0], outs[1]
    assert zero["closed"]["steps"] == [0, 1, 2, 3] and zero["closed"]["errors"] == []
    assert one["closed"]["steps"] == list(range(7)) and one["closed"]["errors"] == []
    assert (one["closed"]["ranks"]["steps"] == 4).all()  # steps 0-3 judged together, then off
    said = [m for m in one["closed_warnings"] if "stopped watching" in m]
    assert len(said) == 1 and "rank(s) 0 stopped watching (w.close(), or the watcher was garbage-collected) " \
        "before step 4" in said[0], one["closed_warnings"]
    assert not [m for m in zero["closed_warnings"] if "stopped watching" in m]
    assert one["collected"]["steps"] == list(range(5)) and (one["collected"]["ranks"]["steps"] == 2).all()
    assert max(out[k]["s"] for out in outs for k in ("closed", "collected")) < 30


def test_re_watching_in_one_job_destroys_each_watchers_gloo_group_once_every_rank_is_done(world2):
    """Each watcher that joined the cross-rank part made its own gloo group (3 threads and a socket per
    peer here) and none was ever destroyed: 6 re-watches held 6 groups. Now a group goes once every
    rank is done with it, and every watcher's exchange still works."""
    for out in _outs(world2, "rewatch"):
        assert out["errors"] == [] and out["judged"] == [2] * 6 and out["s"] < 60, out
        groups0, threads0 = out["before"]
        held = [g - groups0 for g, _ in out["sizes"]]
        assert max(held) <= 2, out["sizes"]       # this watcher's group, and at most the previous one
        by_groups = {}  # the process's thread count follows the groups held, not the number of watches
        for g, t in out["sizes"]:
            by_groups.setdefault(g, set()).add(t)
        assert all(len(t) == 1 for t in by_groups.values()), out["sizes"]


def test_comm_hook_skipping_one_bucket_on_one_rank_is_replica_divergence(world2):
    outs = _outs(world2, "skipped_bucket")
    skipped = outs[1]["skipped"]  # every parameter that was ever in DDP's first bucket on rank 1
    layers = {n.rsplit(".", 1)[0] for n in skipped}
    assert skipped and "module.fc2" in layers
    for out in outs:
        div = out["findings"][out["findings"]["kind"] == "replica_divergence"]
        assert set(div["layer"]) == layers, div
        assert (div["step"] == 0).all() and (div["rank"] == 1).all() and (div["severity"] == "error").all()
        for _, row in div.iterrows():
            assert "rank(s) 1" in row["message"]
            assert all(repr(n) in row["message"] for n in skipped if n.startswith(row["layer"] + "."))
        assert (out["ranks"]["allreduce_s"] > 0).all()  # the user's hook, timed through gs.timed


def test_parameter_changed_on_one_rank_is_replica_divergence(world2):
    for out in _outs(world2, "changed_param"):
        row = _only(out["findings"], "replica_divergence")
        # nudged after step 4's optimizer step; checksums at captured steps 0, 2, 4 (before), 6
        assert (row["layer"], row["rank"], row["step"]) == ("module.fc1", 1, 6)
        assert "'module.fc1.bias'" in row["message"] and "weight" not in row["message"]
        assert row["count"] == 2 and row["last_step"] == 8


def test_rank_sleeping_in_forward_is_a_straggler(world2):
    for out in _outs(world2, "straggler"):
        row = _only(out["findings"], "straggler")
        assert row["rank"] == 1 and row["severity"] == "warning"
        assert "rank 1 is a straggler" in row["message"]
        ranks = out["ranks"].set_index("rank")
        assert ranks.loc[1, "busy_s"] > ranks.loc[0, "busy_s"] + 0.02
        # every rank's wall step is the same: the fast rank waits in the all-reduce
        assert ranks.loc[0, "allreduce_s"] > ranks.loc[1, "allreduce_s"]


def test_fsdp2_per_layer_norms_equal_unsharded(world2):
    for out in _outs(world2, "fsdp2_norms"):
        assert out["errors"] == []
        assert sum(out["local_numel"]) < 8 * 16 + 16 + 16 * 4 + 4  # really sharded
        for metric in ("param_norm", "param_grad_norm", "update_norm"):
            ref, sharded = out[metric]
            cols = ["fc1", "fc2"]
            assert np.isfinite(sharded[cols].to_numpy()).all(), (metric, sharded)
            np.testing.assert_allclose(sharded[cols].to_numpy(), ref[cols].to_numpy(), rtol=1e-5,
                                       err_msg=metric)


def test_wrapper_gradsight_cannot_see_through_gets_one_honest_warning(world2):
    for out in _outs(world2, "opaque_wrapper"):
        said = [m for m in out["warnings"] if "DeepSpeed ZeRO partitions" in m]
        assert len(said) == 1 and "not the layer's full tensors" in said[0]
        assert "replica_divergence" not in set(out["findings"]["kind"])  # partitions differ by design
        assert out["errors"] == []


def test_ranks_watching_different_models_warn_once_at_watch_and_never_exchange(world2):
    """The handshake at watch start (not the first exchange, as before issue 14's follow-up) finds the
    models differ: one warning per rank, no internal error, training and local capture go on."""
    outs = _outs(world2, "different_models")
    for out in outs:
        assert out["steps"] == [0, 1, 2]  # training and local capture went on
        assert out["errors"] == []
        said = [m for m in out["warnings"] if "watch different models" in m]
        assert len(said) == 1 and "rank 0: 4 layers" in said[0] and "rank 1: 6 layers" in said[0], out["warnings"]
    assert outs[0]["solo_steps"] == [0, 1, 2] and outs[1]["solo_steps"] is None


def test_a_watcher_on_rank_0_only_warns_and_never_waits(world2):
    out = _outs(world2, "only_rank0_watches")[0]
    assert out["steps"] == [0, 1, 2, 3] and out["errors"] == [] and (out["rank"], out["world"]) == (0, 2)
    said = [m for m in out["warnings"] if "did not call gs.watch" in m]
    assert len(said) == 1 and "rank(s) 1" in said[0] and "distributed=False" in said[0], out["warnings"]
    assert "did not call gs.watch" in out["ranks_error"]


def test_a_layer_added_on_every_rank_mid_run_keeps_the_cross_rank_part_working(world2):
    for out in _outs(world2, "edit_midrun"):
        assert out["layers"][-1] == "3" and out["errors"] == [], (out["layers"], out["errors"])
        assert not [m for m in out["warnings"] if "cross-rank findings are off" in m], out["warnings"]
        assert (out["ranks"]["steps"] == 7).all() and list(out["step_s"].index) == list(range(7))
        row = _only(out["findings"], "replica_divergence")  # the added layer's parameter is checksummed
        assert (row["layer"], row["rank"], row["step"]) == ("3", 1, 5) and "'3.bias'" in row["message"]


def test_outside_a_process_group_there_is_no_rank_table():
    w = gs.watch(MLP())
    try:
        with pytest.raises(ValueError, match="torch.distributed job"):
            w.ranks()
        with pytest.raises(ValueError, match="rank 0 only"):
            w.history("grad_norm", rank=1)
        assert w.rank == 0 and w.world_size == 1 and "rank" not in w.findings()
    finally:
        w.close()



def test_a_step_dropped_and_a_model_edited_on_one_rank_only_stop_the_exchange_on_every_rank(world2):
    outs = _outs(world2, "edit_one_rank")
    assert outs[0]["steps"] == [0, 1, 2, 3, 4] and outs[1]["steps"] == [0, 1, 3, 4]  # rank 1 dropped step 2
    for out in outs:
        assert out["errors"] == [], out["errors"]
        said = [m for m in out["warnings"] if "cross-rank findings are off" in m]
        assert len(said) == 1 and "changed on rank(s) 1 but not (yet) on rank(s) 0 at step 3" in said[0], said
        assert (out["ranks"]["steps"] == 2).all()  # steps 0 and 1 judged; 2 dropped by rank 1; then off


# --- recordings of a job: one run with a rank dimension ---------------------------------------
def test_every_rank_recording_into_one_path_opens_as_one_run_with_a_rank_dimension(world2):
    import pandas as pd

    outs = _outs(world2, "ranked_recording")
    rec = gs.open(outs[0]["path"])
    assert (rec.rank, rec.world_size) == (0, 2) and rec.problems == [] and not rec.live
    assert rec.manifest["format_version"] == "1.1" and rec.manifest["world_size"] == 2
    pd.testing.assert_frame_equal(rec.steps(), outs[0]["steps"])
    for r, out in enumerate(outs):
        pd.testing.assert_frame_equal(rec.history("grad_norm", rank=r), out["grad_norm"])
        for m in gs_rank_metrics():  # every rank's watcher holds every rank's step times; the recording too
            pd.testing.assert_frame_equal(rec.history(m, rank=r), outs[0]["rank_metrics"][m, r])
    found = rec.findings()
    origin = _only(found, "rank_nonfinite")
    assert (origin["rank"], origin["step"], origin["layer"]) == (1, 4, "module.fc1")
    for r, out in enumerate(outs):  # each rank's own findings, as its watcher had them, under its rank
        mine = out["findings"][out["findings"]["rank"] == r]
        got = found[found["rank"] == r]
        assert sorted(zip(mine["kind"], mine["layer"], mine["step"], strict=True)) == \
            sorted(zip(got["kind"], got["layer"], got["step"], strict=True)), (mine, got)
    assert len(found) == len(outs[0]["findings"][outs[0]["findings"]["rank"] == 0]) + len(
        outs[1]["findings"])  # rank 1's view holds the cross-rank findings once, like the recording
    ranks, live = rec.ranks(), outs[0]["ranks"]
    same = ["rank", "steps", "step_s", "forward_s", "backward_s", "allreduce_s", "busy_s", "nonfinite_steps",
            "first_nonfinite_step", "self"]
    pd.testing.assert_frame_equal(ranks[same], live[same])
    serious = found[found["severity"].isin(["error", "warning"])]
    assert ranks["findings"].tolist() == [int((serious["rank"] == r).sum()) for r in range(2)]
    with pytest.raises(ValueError, match="ranks 0..1"):
        rec.history("grad_norm", rank=2)
    saved = gs.open(Path(outs[0]["path"]).parent / "saved")
    assert saved.world_size == 2 and saved.problems == []
    pd.testing.assert_frame_equal(saved.findings(), found)
    pd.testing.assert_frame_equal(saved.ranks(), ranks)
    for r in range(2):
        for m in ("grad_norm", "step_s", "allreduce_s"):
            pd.testing.assert_frame_equal(saved.history(m, rank=r), rec.history(m, rank=r))


def test_the_summary_of_a_job_names_the_rank_of_each_finding(world2, capsys):
    """`gradsight summary` of a job: whose layers it shows, a line per rank, and each finding's rank (a
    nan_origin of the rank that inherited the NaN read like the origin's without it)."""
    from gradsight.cli import main

    assert main(["summary", _outs(world2, "ranked_recording")[0]["path"]]) == 1
    out = capsys.readouterr().out
    assert "torch.distributed job of 2 ranks" in out and "Layers (rank 0's leaf modules" in out
    ranks = out[out.index("Ranks ("):].splitlines()[2:4]
    assert [line.split()[0] for line in ranks] == ["0", "1"] and "step 4" in ranks[1], ranks
    assert "rank_nonfinite [rank 1] at module.fc1, step 4" in out
    assert "nan_origin [rank 0] at (model), step 4" in out  # inherited through the all-reduce
    assert max(len(line) for line in out.splitlines()) <= 100


def test_views_work_on_a_ranked_recording_through_the_same_api_as_a_watcher(world2):
    """What a dashboard with a rank selector reads (ranks(), history(m, rank=r), rank, world_size) is
    one definition, RunQueries', on a Watcher and a Recording alike; every view opens on a ranked run."""
    from gradsight import widgets as gw
    from gradsight.recording.reader import Recording
    from gradsight.records.queries import RunQueries
    from gradsight.watcher import Watcher

    assert Watcher.history is RunQueries.history and Recording.history is RunQueries.history
    for name in ("rank", "world_size", "ranks"):
        assert hasattr(RunQueries, name) and hasattr(Watcher, name) and hasattr(Recording, name)
    rec = gs.open(_outs(world2, "ranked_recording")[0]["path"])
    assert "closed" in rec._repr_html_()
    dash = rec.dashboard()
    assert dash is not None
    for fig in (gw.gradient_flow(rec), gw.heatmap(rec), gw.training_curves(rec)):
        assert fig.axes


def _dying(rank: int, world: int, tmp: str) -> None:
    """Both ranks train 5 steps recording into one path; then rank 1 is SIGKILLed (after its writer
    flushed), and rank 0 closes its watcher and leaves without another collective (a barrier with a
    dead peer would wait forever)."""
    import os
    import signal

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    model = _ddp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w = gs.watch(model, optimizer=opt, record=gs.RecordTo(f"{tmp}/run", flush_steps=2, flush_seconds=0.05))
    _train(model, opt, rank, 5)
    marker = Path(tmp) / "flushed"
    if rank == 1:
        time.sleep(0.5)  # the writer thread writes what was queued (steps 0-3; step 4 is held back)
        marker.write_text("")
        os.kill(os.getpid(), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    w.close()
    os._exit(0)


def test_a_rank_killed_mid_run_leaves_a_readable_recording_that_names_it(tmp_path):
    import signal

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_dying, args=(r, 2, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0, -signal.SIGKILL]
    with pytest.warns(GradsightWarning, match=r"rank 1's shard .* ended early: its writer .* stopped at step 3"):
        rec = gs.open(tmp_path / "run")
    assert not rec.live and rec.world_size == 2
    assert rec.steps()["step"].tolist() == [0, 1, 2, 3, 4]                    # rank 0 closed its shard
    dead = rec.history("grad_norm", rank=1)
    assert dead.index.tolist() == [0, 1, 2, 3] and np.isfinite(dead.to_numpy()).all()  # what rank 1 wrote
    assert rec.history("step_s", rank=1).index.tolist() == [0, 1, 2, 3]
    assert len([p for p in rec.problems if "rank 1's shard" in p and "ended early" in p]) == 1
    assert list(rec.ranks()["rank"]) == [0, 1] and "rank" in rec.findings()


def test_saving_a_ranked_recording_writes_what_it_shows_as_one_process(world2, tmp_path):
    import pandas as pd

    rec = gs.open(_outs(world2, "ranked_recording")[0]["path"])
    rec.save(tmp_path / "copy")
    copy = gs.open(tmp_path / "copy")
    assert copy.world_size == 1 and copy.problems == []
    pd.testing.assert_frame_equal(copy.history("grad_norm"), rec.history("grad_norm"))
    pd.testing.assert_frame_equal(copy.findings(), rec.findings())
