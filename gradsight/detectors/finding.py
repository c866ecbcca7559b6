"""Findings and the episode log.

A detector returns a :class:`Finding` for every record in which its condition holds; the
log merges the findings of one kind about one cause in consecutive records into one
episode (one row of ``w.findings()``, with ``count`` and ``last_step``), so a fault that
lasts 5,000 steps is one row, not 5,000. The log is bounded: when it is full, the oldest
closed non-error episodes go first.

Status: a finding whose condition holds but whose evidence window has not filled is
``suspected`` (severity ``info``); it becomes ``confirmed`` with its real severity when the
evidence is complete. A suspicion that stops holding before that is ``dismissed``: it
leaves ``w.findings()`` and stays in ``w.findings(all=True)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import pandas as pd

FINDING_COLUMNS = ["step", "last_step", "count", "layer", "kind", "severity", "message", "hint",
                   "phase", "op", "source", "value", "threshold", "status", "affected"]
SEVERITIES = ("info", "warning", "error")
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
"""Most serious first: the order of severities wherever findings are ordered or compared."""
STATUSES = ("suspected", "confirmed", "dismissed")
_LEVEL = {s: i for i, s in enumerate(SEVERITIES)}  # escalation order
MAX_EPISODES = 2000


@dataclass
class Finding:
    """One episode: ``kind`` on ``layer`` from ``step`` to ``last_step`` (``count`` records).

    ``layer`` names the cause (the most upstream layer for findings that span several);
    ``affected`` lists every layer the finding covers. ``key`` (not a column) is what
    merges findings across records: the layer, or ``""`` for a whole-model cause whose
    named layer may move from step to step.
    """

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
    status: str = "confirmed"
    affected: tuple[str, ...] = ()
    key: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.last_step < 0:
            self.last_step = self.step
        if self.severity not in _LEVEL:
            raise ValueError(f"severity must be one of {SEVERITIES}; got {self.severity!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}; got {self.status!r}")
        self.affected = tuple(self.affected) or ((self.layer,) if self.layer else ())

    @property
    def merge_key(self) -> tuple[str, str]:
        return self.kind, self.layer if self.key is None else self.key

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("key")
        return d

    def __str__(self) -> str:
        where = f" at {self.layer!r}" if self.layer else ""
        more = f" (+{len(self.affected) - 1} layers)" if len(self.affected) > 1 else ""
        tag = "" if self.status == "confirmed" else f" ({self.status})"
        return f"[{self.severity}] {self.kind}{where}{more}{tag}, step {self.step}: {self.message}"


class FindingLog:
    """Episodes, merged across consecutive records. Use per record::

        log.begin(step); log.add(finding) (or log.report(...)); ...; new = log.end()
    """

    def __init__(self, max_episodes: int = MAX_EPISODES):
        self.episodes: list[Finding] = []
        self._open: dict[tuple[str, str], Finding] = {}
        self._seen: dict[tuple[str, str], Finding] = {}
        self._held: set[tuple[str, str]] = set()
        self._warned: set[tuple[str, str, str]] = set()
        self._step = -1
        self._new: list[Finding] = []
        self.max_episodes = max_episodes

    def begin(self, step: int) -> None:
        self._step = step
        self._seen = {}
        self._held = set()
        self._new = []

    def hold(self, kind: str) -> None:
        """``kind`` could not be measured in this record (a detail-step signal): its open
        episodes stay open without counting this record."""
        self._held.update(k for k in self._open if k[0] == kind)

    def report(self, kind: str, layer: str, severity: str, message: str, *, start: int | None = None,
               count: int = 1, at: int | None = None, **fields) -> Finding:
        """Shorthand for :meth:`add`. ``start``/``count``: a detector that waited for a
        condition to persist back-dates the episode to where it began. ``at``: a finding
        decided one record late belongs to that earlier step."""
        now = self._step if at is None else at
        return self.add(Finding(step=now if start is None else start, layer=layer, kind=kind, severity=severity,
                                message=message, last_step=now, count=count, **fields))

    def add(self, f: Finding) -> Finding:
        """The condition of ``f`` holds in this record (``f.last_step``; ``f.step`` may be
        earlier when the detector waited for the condition to persist)."""
        key = f.merge_key
        if key in self._seen:  # reported twice in one record: keep the first
            return self._seen[key]
        ep = self._open.get(key)
        if ep is not None:
            ep.last_step = f.last_step
            ep.count += 1
            news = _LEVEL[f.severity] > _LEVEL[ep.severity] or (ep.status == "suspected" and f.status == "confirmed")
            for name in ("message", "hint", "phase", "op", "source", "value", "threshold", "layer"):
                setattr(ep, name, getattr(f, name))
            ep.affected = tuple(dict.fromkeys((*ep.affected, *f.affected)))  # every layer of the episode
            if _LEVEL[f.severity] > _LEVEL[ep.severity]:
                ep.severity = f.severity
            if ep.status == "suspected":
                ep.status = f.status
            if news:
                self._new.append(ep)  # an escalation (or a confirmation) is news
        else:
            ep = replace(f)
            self._open[key] = ep
            self.episodes.append(ep)
            self._new.append(ep)
            self._trim()
        self._seen[key] = ep
        return ep

    def fingerprint(self) -> tuple:
        """Changes whenever what the findings table would show changes (episodes are updated
        in place): lets a reader skip rebuilding the table for an unchanged log."""
        return tuple((id(e), e.step, e.last_step, e.count, e.severity, e.status, e.message, e.layer)
                     for e in self.episodes)

    def fold(self, which: Callable[[Finding], bool]) -> list[Finding]:
        """Remove the open episodes ``which`` selects (another finding explains them):
        returned so that the explaining finding can list their layers."""
        out = []
        for key in [k for k, e in self._open.items() if which(e)]:
            ep = self._open.pop(key)
            self._seen.pop(key, None)
            self.episodes = [e for e in self.episodes if e is not ep]
            self._new = [e for e in self._new if e is not ep]
            out.append(ep)
        return out

    def open_episode(self, key: tuple[str, str]) -> Finding | None:
        return self._open.get(key)

    def end(self) -> list[Finding]:
        """Close episodes not reported in this record (a suspicion that closes unconfirmed
        is dismissed); return what is new in it."""
        for key in [k for k in self._open if k not in self._seen and k not in self._held]:
            self._close(key)
        return self._new

    def late(self, found: list[Finding], kinds: tuple[str, ...]) -> list[Finding]:
        """Findings of ``kinds`` about the record that just ended, decided after it (its loss
        arrived late): merge them, close the open episodes of ``kinds`` they do not continue,
        and return what is new."""
        self._seen, self._new = {}, []
        for f in found:
            self.add(f)
        for key in [k for k in self._open if k[0] in kinds and k not in self._seen]:
            self._close(key)
        return self._new

    def _close(self, key: tuple[str, str]) -> None:
        ep = self._open.pop(key)
        if ep.status == "suspected":
            ep.status = "dismissed"

    def live_warnings(self, new: list[Finding]) -> list[Finding]:
        """Serious findings seen for the first time (per kind and layer): one warning per kind
        per record, naming the other layers in the same message, never a repeat."""
        fresh = [f for f in new if _LEVEL[f.severity] >= 1 and (f.kind, f.layer, f.severity) not in self._warned]
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
        for level in (0, 1, 2):
            for i, e in enumerate(self.episodes):
                if id(e) not in open_ids and _LEVEL[e.severity] <= level:
                    del self.episodes[i]
                    return
        del self.episodes[0]

    def frame(self, all: bool = False) -> pd.DataFrame:  # noqa: A002 - mirrors w.findings(all=True)
        """Episodes by first step (the watcher orders them fully). Dismissed suspicions only
        with ``all=True``."""
        eps = self.episodes if all else [e for e in self.episodes if e.status != "dismissed"]
        if not eps:
            return pd.DataFrame({c: pd.Series(dtype=_DTYPES.get(c, object)) for c in FINDING_COLUMNS})
        df = pd.DataFrame([e.as_dict() for e in eps], columns=FINDING_COLUMNS).astype(_DTYPES)
        return df.sort_values(["step", "last_step"], kind="stable").reset_index(drop=True)


_DTYPES = {"step": "int64", "last_step": "int64", "count": "int64", "value": "float64", "threshold": "float64"}
