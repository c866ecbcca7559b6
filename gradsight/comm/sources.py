"""Where the comm reads kernel state: the watcher registry and recent gradcheck reports.

Imported lazily and injectable, so that the comm loads (and answers `hello`) even when the
capture engine cannot be imported, and tests can drive it with fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ProtocolError


class KernelSources:
    """The live registry of this kernel process (gradsight.bus)."""

    def __init__(self, registry: Any = None, recent_reports: Callable[[], list] | None = None):
        self._registry = registry
        self._recent_reports = recent_reports

    @property
    def registry(self) -> Any:
        if self._registry is None:
            try:
                from gradsight import bus as registry
            except Exception:  # the engine failed to import: report it in `status`, do not crash
                return None
            self._registry = registry
        return self._registry

    def watchers(self) -> list[Any]:
        """Live watchers, then the recordings open in this kernel (comm.recording_source)."""
        reg = self.registry
        if reg is None:
            return []
        from .recording_source import recording_sources

        return [*reg.active_watchers(), *recording_sources(reg)]

    def find(self, name: str | None) -> Any:
        """The named live watcher; None means the most recently created one."""
        ws = self.watchers()
        if not ws:
            raise ProtocolError("not_found", "no model is watched in this kernel: run `w = gs.watch(model)`")
        if name is None:
            live = [w for w in ws if not hasattr(w, "recording")]
            return (live or ws)[-1]
        for w in ws:
            if w.name == name:
                return w
        known = ", ".join(w.name for w in ws[:10])
        raise ProtocolError("not_found", f"no watcher named {name!r}; watched: {known}")

    def subscribe(self, callback: Callable[[str, Any], None]) -> Callable[[], None]:
        reg = self.registry
        if reg is None:
            return lambda: None
        return reg.subscribe(callback)

    def gradcheck_reports(self) -> list[Any] | None:
        """Recent reports, newest last as the gradcheck module keeps them; None if unavailable."""
        fn = self._recent_reports
        if fn is None:
            try:
                from gradsight.gradcheck import recent_reports as fn
            except Exception:
                return None
        return list(fn())
