"""The bus: which watchers are alive in this process, and who wants to hear about them.

A package-level module because its listeners (the watcher publishes; ``widgets.dashboard``
and ``comm`` subscribe) sit in different layers; it imports nothing of gradsight's. A re-run notebook cell calls ``gs.watch(model)`` again: the registry finds the old
watcher of the same model (by identity, through a weak reference) so the new one can
replace it instead of stacking hooks. The JupyterLab panel subscribes here; with no
subscriber, publishing costs one empty loop.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import Any

_watchers: list[weakref.ref] = []
_subscribers: list[Callable[[str, Any], None]] = []
# Held while a watcher stores a step or follows a model change, and by readers on other
# threads (the panel's requests on a kernel subshell) while they read: they see a whole step.
lock = threading.RLock()
_recordings: list[weakref.ref] = []


def add(watcher: Any) -> None:
    _watchers.append(weakref.ref(watcher))
    publish("watch", watcher)


def discard(watcher: Any) -> None:
    _watchers[:] = [r for r in _watchers if (w := r()) is not None and w is not watcher]


def active_watchers() -> list[Any]:
    """Live (not closed) watchers, oldest first."""
    alive = [w for r in _watchers if (w := r()) is not None and not w.closed]
    _watchers[:] = [weakref.ref(w) for w in alive]
    return alive


def watcher_of(model: Any) -> Any | None:
    for w in active_watchers():
        if w.model is model:
            return w
    return None


def unique_name(base: str) -> str:
    taken = {w.name for w in active_watchers()}
    if base not in taken:
        return base
    k = 2
    while f"{base}#{k}" in taken:
        k += 1
    return f"{base}#{k}"


def add_recording(rec: Any) -> None:
    """A recording opened in this process (``gs.open``): the panel lists it next to the watchers."""
    _recordings.append(weakref.ref(rec))
    publish("open", rec)


def discard_recording(rec: Any) -> None:
    _recordings[:] = [r for r in _recordings if (x := r()) is not None and x is not rec]


def open_recordings() -> list[Any]:
    """Recordings opened and neither closed nor dropped, oldest first."""
    alive = [x for r in _recordings if (x := r()) is not None and not getattr(x, "detached", False)]
    _recordings[:] = [weakref.ref(x) for x in alive]
    return alive


def subscribe(callback: Callable[[str, Any], None]) -> Callable[[], None]:
    """Call ``callback(event, watcher)`` on "watch", "step" and "close" (and ``(event, recording)``
    on "open" and "close" of a recording); returns unsubscribe."""
    _subscribers.append(callback)

    def unsubscribe() -> None:
        if callback in _subscribers:
            _subscribers.remove(callback)

    return unsubscribe


def publish(event: str, watcher: Any) -> None:
    for callback in list(_subscribers):
        with contextlib.suppress(Exception):  # a listener must never break the training step
            callback(event, watcher)
