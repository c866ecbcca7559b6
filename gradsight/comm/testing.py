"""Test doubles for the protocol: a comm that records what is sent, and a small watcher.

They live in the package (like ``torch.testing``) so that the Python tests, the fixture
examples and anyone writing a front-end can drive the kernel end without torch or a kernel.
The fake watcher implements exactly the watcher API the comm reads, with the same column
names and error types as gradsight.Watcher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..detectors.finding import FINDING_COLUMNS
from ..records.metrics import LAYER_METRICS
from .buffers import unpack


class FakeComm:
    """Records sends; `deliver()` plays a front-end message into the registered callback."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], list[Any]]] = []
        self.closed = False
        self._on_msg: Callable[[dict[str, Any]], None] | None = None
        self._on_close: Callable[[Any], None] | None = None

    def on_msg(self, cb: Callable[[dict[str, Any]], None]) -> None:
        self._on_msg = cb

    def on_close(self, cb: Callable[[Any], None]) -> None:
        self._on_close = cb

    def send(self, data: dict[str, Any], buffers: list[Any] | None = None, **_: Any) -> None:
        self.sent.append((data, list(buffers or [])))

    def close(self) -> None:
        self.closed = True

    def deliver(self, data: Any, buffers: list[Any] | None = None) -> None:
        assert self._on_msg is not None
        self._on_msg({"content": {"comm_id": "fake", "data": data}, "buffers": buffers or []})

    def close_from_frontend(self) -> None:
        assert self._on_close is not None
        self._on_close({"content": {"comm_id": "fake", "data": {}}})

    def kinds(self) -> list[str]:
        return [m["kind"] for m, _ in self.sent]

    def last(self, kind: str | None = None) -> tuple[dict[str, Any], list[Any]]:
        for m, b in reversed(self.sent):
            if kind is None or m["kind"] == kind:
                return m, b
        raise AssertionError(f"no {kind!r} message sent; sent: {self.kinds()}")

    def array(self, ref: dict[str, Any], buffers: list[Any]) -> np.ndarray:
        return unpack(ref, buffers)


class CheckedComm(FakeComm):
    """A FakeComm that validates every message sent against the schema: each one is a contract."""

    def send(self, data: dict[str, Any], buffers: list[Any] | None = None, **kw: Any) -> None:
        from .schema import validate

        validate(data)
        super().send(data, buffers, **kw)


@contextmanager
def unthrottled_hub(sources: Any) -> Iterator[Any]:
    """A Hub on ``sources`` (a KernelSources) that pushes on every step, without a shell; its
    sessions are closed on leaving."""
    from .hub import Hub

    hub = Hub(sources, None, min_interval=0.0, max_share=None)
    try:
        yield hub
    finally:
        for s in list(hub.sessions):
            s.close()


@dataclass
class FakeHistogram:
    layer: str
    of: str
    step: int
    edges: np.ndarray
    counts: np.ndarray
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    zero: int = 0


class FakeWatcher:
    """A watcher whose numbers are a deterministic function of the step (no torch)."""

    def __init__(self, name: str = "MLP", layers: tuple[str, ...] = ("fc1", "act", "fc2"), bins: int = 8):
        self.name = name
        self.step_count = 0
        self.closed = False
        self._layers = list(layers)
        self._types = ["Linear" if n.startswith("fc") else "ReLU" for n in layers]
        self._bins = bins
        self._findings: list[dict[str, Any]] = []
        self.gradcheck_calls: list[tuple[str, str]] = []
        self.gradcheck_result: Any = None

    def advance(self, n: int = 1) -> None:
        self.step_count += n

    def add_finding(self, **row: Any) -> None:
        self._findings.append({c: row.get(c) for c in FINDING_COLUMNS})

    def _check(self, layer: str) -> int:
        if layer not in self._layers:
            raise ValueError(f"gradsight: no layer named {layer!r} in {self.name}")
        return self._layers.index(layer)

    def layers(self) -> pd.DataFrame:
        return self._layers_at(self.step_count)

    def _layers_at(self, s: int) -> pd.DataFrame:
        """layers() as it read after ``s`` steps."""
        n = len(self._layers)
        decay = np.array([10.0 ** (-i) for i in range(n)])
        df = pd.DataFrame({"layer": self._layers, "type": self._types})
        df["act_mean"] = 0.1 * s
        df["act_zero_frac"] = [0.5 if t == "ReLU" else 0.0 for t in self._types]
        df["grad_norm"] = decay * (1 + s) if s else np.nan
        df["grad_nan"] = 0.0
        df["param_norm"] = [1.0 + s if t == "Linear" else np.nan for t in self._types]
        df["update_ratio"] = [1e-3 if t == "Linear" else np.nan for t in self._types]
        df["step"] = s - 1
        return df

    def history(self, metric: str, rank: int | None = None) -> pd.DataFrame:
        """One row per step, one column per layer: the layers() column ``metric`` after each step."""
        if metric not in LAYER_METRICS:
            raise ValueError(f"gradsight: history({metric!r}): unknown metric")
        frames = [self._layers_at(s + 1) for s in range(self.step_count)]
        data = [f[metric].to_numpy(dtype=np.float64) if metric in f.columns else np.full(len(f), np.nan)
                for f in frames]  # a metric this fake does not compute: never measured
        return pd.DataFrame(np.array(data).reshape(len(data), len(self._layers)), columns=self._layers,
                            index=pd.Index(np.arange(self.step_count), name="step"))

    def steps(self) -> pd.DataFrame:
        steps = np.arange(self.step_count)
        return pd.DataFrame(
            {"step": steps, "loss": 1.0 / (1 + steps), "lr": 0.1, "total_grad_norm": 1.0 + steps}
        )

    def findings(self) -> pd.DataFrame:
        return pd.DataFrame(self._findings, columns=FINDING_COLUMNS)

    def histogram_steps(self, layer: str, of: str = "grad") -> list[int]:
        i = self._check(layer)
        if of == "weight" and self._types[i] != "Linear":
            return []
        return list(range(self.step_count))

    def histogram(self, layer: str, of: str = "grad", step: int | None = None) -> FakeHistogram:
        available = self.histogram_steps(layer, of)
        if not available:
            raise ValueError(f"gradsight: no {of} histogram of {layer!r} yet")
        step = available[-1] if step is None else step
        if step not in available:
            raise ValueError(f"gradsight: no {of} histogram of {layer!r} at step {step}")
        half = self._bins // 2
        mags = np.logspace(-6, 0, half)
        edges = np.concatenate(
            [-mags[::-1], [0.0], mags]
        )  # bins + 1 signed log-spaced edges, 0 in the middle
        counts = np.arange(self._bins, dtype=np.int64) + step
        return FakeHistogram(layer, of, step, edges.astype(np.float64), counts, nan=step % 2, zero=1)

    def gradcheck(self, layer: str, mode: str = "full") -> Any:
        self._check(layer)
        self.gradcheck_calls.append((layer, mode))
        return self.gradcheck_result


class FakeRankedWatcher(FakeWatcher):
    """One rank's watcher in a torch.distributed job: the Watcher's rank API (``rank``,
    ``world_size``, ``ranks()``, ``history(metric, rank=)``) with findings carrying a ``rank``
    column, as gradsight.Watcher has them there."""

    RANK_COLUMNS = ("step_s", "forward_s", "backward_s", "allreduce_s", "busy_s")

    def __init__(self, name: str = "DDP", world_size: int = 2, rank: int = 0, **kw: Any):
        super().__init__(name, **kw)
        self.world_size = world_size
        self.rank = rank
        self.step_seconds = [0.01 * (1 + r) for r in range(world_size)]  # rank r takes (1+r)x as long

    def layers(self, rank: int | None = None) -> pd.DataFrame:
        """Like a live Watcher in a job: its own rank's layers only."""
        if rank is not None and rank != self.rank:
            raise ValueError(f"gradsight: layers(rank={rank}): this watcher is rank {self.rank}")
        return super().layers()

    def add_finding(self, rank: int = -1, **row: Any) -> None:
        super().add_finding(**row)
        self._findings[-1]["rank"] = rank

    def findings(self) -> pd.DataFrame:
        return pd.DataFrame(self._findings, columns=[*FINDING_COLUMNS, "rank"])

    def ranks(self) -> pd.DataFrame:
        df = pd.DataFrame({"rank": np.arange(self.world_size), "steps": self.step_count})
        for k, col in enumerate(self.RANK_COLUMNS):
            df[col] = np.array(self.step_seconds) / (1 + k)
        found = self.findings()
        df["findings"] = [int((found["rank"] == r).sum()) for r in range(self.world_size)]
        df["self"] = df["rank"] == self.rank
        return df

    def history(self, metric: str, rank: int | None = None) -> pd.DataFrame:
        """Every rank's step times; layer metrics of its own rank only, as a live Watcher."""
        if metric not in self.RANK_COLUMNS:
            if rank is not None and rank != self.rank:
                raise ValueError(f"gradsight: history(rank={rank}): this watcher is rank {self.rank}")
            return super().history(metric)
        if rank is None:
            raise ValueError(f"gradsight: history({metric!r}): a per-rank metric needs rank=")
        return pd.DataFrame({metric: np.full(self.step_count, self.step_seconds[rank])},
                            index=pd.Index(np.arange(self.step_count), name="step"))


class FakeRegistry:
    """The registry API (active_watchers/subscribe) with an explicit publish()."""

    def __init__(self) -> None:
        self.watchers: list[FakeWatcher] = []
        self.subscribers: list[Callable[[str, Any], None]] = []

    def active_watchers(self) -> list[FakeWatcher]:
        return [w for w in self.watchers if not w.closed]

    def subscribe(self, cb: Callable[[str, Any], None]) -> Callable[[], None]:
        self.subscribers.append(cb)
        return lambda: self.subscribers.remove(cb) if cb in self.subscribers else None

    def watch(self, w: FakeWatcher) -> FakeWatcher:
        self.watchers.append(w)
        self.publish("watch", w)
        return w

    def step(self, w: FakeWatcher, n: int = 1) -> None:
        for _ in range(n):
            w.advance()
            self.publish("step", w)

    def close(self, w: FakeWatcher) -> None:
        w.closed = True
        self.publish("close", w)

    def publish(self, event: str, w: FakeWatcher) -> None:
        for cb in list(self.subscribers):
            cb(event, w)
