"""Issue 12: the protocol fuzz. Hostile panel messages (seeded), each answered by exactly one
reply, none an `internal` error, in bounded time. 5,000 in `make test`; the full 50,000 are
behind the `slow` marker (`make test-slow`)."""

from __future__ import annotations

import random
import time
import warnings

import pytest
import torch
from naive_stats import batch, mlp
from torch import nn

import gradsight as gs
from gradsight.comm import Hub, Session
from gradsight.comm.sources import KernelSources
from gradsight.comm.testing import FakeComm

KINDS = ["hello", "get_snapshot", "get_layer", "get_gradcheck_reports", "run_gradcheck", "get_compare", "status",
         "snapshot", "compare", "error", "nope", "", "HELLO"]
JUNK = [None, True, 0, -1, 1.5, 5.0, 25, 10**30, float("nan"), float("inf"), "", "x" * 70, "../etc", "__class__",
        "0", "1", [], [1, 2], {}, {"a": {"b": [None]}}, "é☃", "a b", "-", "fc1", 3 + 0j]


def message(rng: random.Random, names: list[str], layers: list[str]):
    """One hostile or valid message: valid skeletons with a few fields broken or added."""
    kind = rng.choice(KINDS)
    msg: dict = {"v": 1, "kind": kind, "id": f"r{rng.randrange(10**6)}"}
    if kind in ("get_snapshot", "get_layer", "run_gradcheck"):
        msg["watcher"] = rng.choice([*names, None, "missing"])
    if kind in ("get_layer", "run_gradcheck"):
        msg["layer"] = rng.choice([*layers, "missing", ""])
    if kind == "get_layer" and rng.random() < 0.5:
        msg["max_steps"] = rng.choice([1, 5, 5.0, 24, 0, 25, -3, 2.5, "5", None])
    if kind == "get_layer" and rng.random() < 0.3:
        msg["follow"] = rng.choice([True, False, 0, "yes"])
    if kind == "get_compare":
        msg["watcher"], msg["other"] = (rng.choice([*names, None, "missing"]) for _ in range(2))
        if rng.random() < 0.5:
            msg["metric"] = rng.choice(["grad_norm", "act_mean", "update_ratio", "loss", "", None])
    if kind == "run_gradcheck":
        msg["mode"] = rng.choice(["full", "fast", "bogus", "", "FULL", 3])
    for _ in range(rng.choice([0, 0, 0, 1, 2])):  # break it
        if not isinstance(msg, dict):
            break
        action = rng.random()
        key = rng.choice(["v", "kind", "id", "watcher", "layer", "max_steps", "extra", "client", "mode", "other"])
        if action < 0.4:
            msg[key] = rng.choice(JUNK)
        elif action < 0.7:
            msg.pop(key, None)
        else:
            msg = rng.choice([msg, [msg], "hello", None, 42, {"nested": msg}])
    if isinstance(msg, dict) and isinstance(msg.get("max_steps"), complex):
        msg["max_steps"] = "complex"
    return msg


def _fuzz(n: int, budget_s: float) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w = gs.watch(model, optimizer=opt, histogram_every=1, name="fuzzed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(3):
            x, y = batch(s)
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    comm = FakeComm()
    session = Session(comm, Hub(KernelSources(), None))
    session.executing = True  # run_gradcheck is refused as 'busy' (the gradcheck itself is tested elsewhere)
    rng = random.Random(12)
    names, layers = [w.name], list(w.layer_names)
    start = time.perf_counter()
    try:
        for k in range(n):
            before = len(comm.sent)
            msg = message(rng, names, layers)
            if k % 997 == 0:
                session.executing = False  # a few real gradchecks too
                if isinstance(msg, dict):
                    msg.update(kind="run_gradcheck", watcher=w.name, layer="0", mode="fast")
            comm.deliver(msg)
            session.executing = True
            assert len(comm.sent) == before + 1, f"message {k}: {len(comm.sent) - before} replies to {msg!r}"
            reply = comm.sent[-1][0]
            assert reply.get("code") != "internal", f"message {k}: {msg!r} -> {reply}"
    finally:
        took = time.perf_counter() - start
        session.close()
        w.close()
    assert took < budget_s, f"{n} messages took {took:.1f} s"


def test_protocol_fuzz_5000():
    _fuzz(5_000, budget_s=60)


@pytest.mark.slow
def test_protocol_fuzz_50000():
    _fuzz(50_000, budget_s=600)
