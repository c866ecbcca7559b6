"""Findings and the episode log.

A detector reports a condition for every record in which it holds; the log merges the
reports of one kind on one layer in consecutive records into one episode (one row of
``w.findings()``, with ``count`` and ``last_step``), so a fault that lasts 5,000 steps
is one row, not 5,000. The log is bounded: when it is full, the oldest closed
non-error episodes go first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import pandas as pd

FINDING_COLUMNS = ["step", "last_step", "count", "layer", "kind", "severity", "message", "hint",
                   "phase", "op", "source", "value", "threshold"]
SEVERITIES = ("info", "warning", "error")
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
"""Most serious first: the order of severities wherever findings are ordered or compared."""
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
MAX_EPISODES = 2000


@dataclass
class Finding:
    """One episode: ``kind`` on ``layer`` from ``step`` to ``last_step`` (``count`` records)."""

    step: int
    layer: str
    kind: str
    severity: str
    message: str
    hint: str = ""
    phase: str = ""
    op: str = ""
    source: str = ""
    value: float = float("nan")
    threshold: float = float("nan")
    last_step: int = -1
    count: int = 1

    def __post_init__(self):
        if self.last_step < 0:
            self.last_step = self.step

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = f" at {self.layer!r}" if self.layer else ""
        return f"[{self.severity}] {self.kind}{where}, step {self.step}: {self.message}"


class FindingLog:
    """Episodes, merged across consecutive records. Use per record::

        log.begin(step); log.report(...); ...; new = log.end()
    """

    def __init__(self, max_episodes: int = MAX_EPISODES):
        self.episodes: list[Finding] = []
        self._open: dict[tuple[str, str], Finding] = {}
        self._seen: dict[tuple[str, str], Finding] = {}
        self._warned: set[tuple[str, str]] = set()
        self._step = -1
        self._new: list[Finding] = []
        self.max_episodes = max_episodes

    def begin(self, step: int) -> None:
        self._step = step
        self._seen = {}
        self._held: set[tuple[str, str]] = set()
        self._new = []

    def hold(self, kind: str) -> None:
        """``kind`` could not be measured in this record (a detail-step signal): its open
        episodes stay open without counting this record."""
        self._held.update(k for k in self._open if k[0] == kind)

    def report(self, kind: str, layer: str, severity: str, message: str, *, start: int | None = None,
               count: int = 1, at: int | None = None, **fields) -> Finding:
        """The condition holds in this record. ``start``/``count``: a detector that waited
        for a condition to persist back-dates the episode to where it began. ``at``: a
        finding decided one record late belongs to that earlier step."""
        if severity not in _RANK:
            raise ValueError(f"severity must be one of {SEVERITIES}; got {severity!r}")
        key = (kind, layer)
        if key in self._seen:  # reported twice in one record: keep the first
            return self._seen[key]
        now = self._step if at is None else at
        ep = self._open.get(key)
        if ep is not None:
            ep.last_step = now
            ep.count += 1
            ep.message = message
            if _RANK[severity] > _RANK[ep.severity]:
                ep.severity = severity
                self._new.append(ep)  # an escalation is news
            for name, value in fields.items():
                setattr(ep, name, value)
        else:
            ep = Finding(step=now if start is None else start, layer=layer, kind=kind,
                         severity=severity, message=message, last_step=now, count=count, **fields)
            self._open[key] = ep
            self.episodes.append(ep)
            self._new.append(ep)
            self._trim()
        self._seen[key] = ep
        return ep

    def end(self) -> list[Finding]:
        """Close episodes not reported in this record; return what is new in it."""
        for key in [k for k in self._open if k not in self._seen and k not in self._held]:
            del self._open[key]
        return self._new

    def live_warnings(self, new: list[Finding]) -> list[Finding]:
        """Serious findings seen for the first time (per kind and layer): one warning per kind
        per record, naming the other layers in the same message, never a repeat."""
        fresh = [f for f in new if _RANK[f.severity] >= 1 and (f.kind, f.layer, f.severity) not in self._warned]
        out: list[Finding] = []
        for kind in dict.fromkeys(f.kind for f in fresh):
            group = [f for f in fresh if f.kind == kind]
            for f in group:
                self._warned.add((f.kind, f.layer, f.severity))
            first = group[0]
            if len(group) > 1:
                names = ", ".join(repr(f.layer) for f in group[1:4]) + (", ..." if len(group) > 4 else "")
                first = replace(first, message=f"{first.message} (also {len(group) - 1} more layer(s): {names})")
            out.append(first)
        return out

    def _trim(self) -> None:
        if len(self.episodes) <= self.max_episodes:
            return
        open_ids = {id(e) for e in self._open.values()}
        for rank in (0, 1, 2):
            for i, e in enumerate(self.episodes):
                if id(e) not in open_ids and _RANK[e.severity] <= rank:
                    del self.episodes[i]
                    return
        del self.episodes[0]

    def frame(self) -> pd.DataFrame:
        if not self.episodes:
            df = pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, object)) for c in FINDING_COLUMNS})
            return df
        rows = [e.as_dict() for e in self.episodes]
        df = pd.DataFrame(rows, columns=FINDING_COLUMNS)
        return df.astype(_DTYPES).sort_values(["step", "last_step"], kind="stable").reset_index(drop=True)


_DTYPES = {"step": "int64", "last_step": "int64", "count": "int64", "value": "float64", "threshold": "float64"}
