"""One function per request kind; the table HANDLERS is the whole of what a panel can ask.

A handler is a plain function ``(context, request) -> reply``: the session calls it and sends
the reply. The context is anything with the :class:`Context` members (the session is one), so
handlers import neither the session nor the hub. A handler only reads watchers through their public API and builds a reply; nothing from the
request is ever evaluated, imported or used as an attribute name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from . import comparison, heatmap, payloads, recording_source
from .errors import ProtocolError
from .limits import MAX_HIST_STEPS


class Context(Protocol):
    """What a handler may use: where watchers come from, the cell state, the panel's selection."""

    sources: Any
    executing: bool  # a cell is running: nothing may run the model now

    rank: int | None  # the rank whose layers the pushes carry (None: the source's own)

    def follow(self, watcher: str | None = None, layer: str | None = None) -> None: ...
    def follow_rank(self, rank: int | None) -> None: ...
    def snapshot_of(self, w: Any, request_id: str | None = None, **kw: Any) -> payloads.Message: ...


Handler = Callable[[Context, dict[str, Any]], payloads.Message]


def hello(context: Context, req: dict[str, Any]) -> payloads.Message:
    return payloads.status(context.sources, req["id"])


def get_snapshot(context: Context, req: dict[str, Any]) -> payloads.Message:
    w = context.sources.find(req["watcher"])
    context.follow(watcher=w.name)
    rank = req.get("rank")
    context.follow_rank(None if rank is None else int(rank))
    recording_source.keep_fresh(context, w)
    return context.snapshot_of(w, req["id"], rank=context.rank)


def open_recording(context: Context, req: dict[str, Any]) -> payloads.Message:
    """gs.open() the recording the panel picked in the file browser; reply: its snapshot."""
    registry = context.sources.registry
    if registry is None:
        raise ProtocolError("unavailable", "gradsight's engine failed to import in this kernel")
    source = recording_source.open_recording(registry, req["path"], req["notebook"])
    context.follow(watcher=source.name)
    recording_source.keep_fresh(context, source)
    return context.snapshot_of(source, req["id"])


def get_layer(context: Context, req: dict[str, Any]) -> payloads.Message:
    """One layer in detail (of the rank asked, where the source holds it); the pushes keep
    following the rank get_snapshot chose."""
    w = context.sources.find(req["watcher"])
    rank = req.get("rank")
    # int(): JSON has one number type, and a schema-valid 5.0 is an integer to the schema
    msg = payloads.layer(w, req["layer"], int(req.get("max_steps", MAX_HIST_STEPS)), req["id"],
                         rank=None if rank is None else int(rank))
    context.follow(watcher=w.name, layer=req["layer"] if req.get("follow", True) else None)
    return msg


def get_compare(context: Context, req: dict[str, Any]) -> payloads.Message:
    """Two sources side by side; reads only, so the pushes keep following what they followed."""
    a = context.sources.find(req["watcher"])
    b = context.sources.find(req["other"])
    return comparison.compare(a, b, req.get("metric", comparison.DEFAULT_METRIC), req["id"])


def get_heatmap(context: Context, req: dict[str, Any]) -> payloads.Message:
    """One metric of every layer over the recorded steps (of one rank); reads only."""
    w = context.sources.find(req["watcher"])
    rank = req.get("rank")
    return heatmap.heatmap(w, req.get("metric", heatmap.DEFAULT_METRIC), None if rank is None else int(rank), req["id"],
                           int(req.get("max_columns", heatmap.MAX_STEP_COLUMNS)))


def get_gradcheck_reports(context: Context, req: dict[str, Any]) -> payloads.Message:
    reports = context.sources.gradcheck_reports()
    if reports is None:
        raise ProtocolError("unavailable", "gradcheck is not available in this kernel's gradsight")
    return payloads.gradcheck_reports(reports, req["id"])


def run_gradcheck(context: Context, req: dict[str, Any]) -> payloads.Message:
    """Runs the model's layer on the kernel's thread state, so never while a cell executes."""
    if context.executing:
        raise ProtocolError("busy", "a cell is running; run the gradcheck when the kernel is idle")
    w = context.sources.find(req["watcher"])
    if recording_source.is_recording(w):
        raise ProtocolError("unavailable", f"{w.name} is a recording: it has no model in this kernel to run a gradcheck on")
    layer = req["layer"]
    mode = req.get("mode", "full")
    try:
        report = w.gradcheck(layer, mode=mode)
    except ValueError as e:
        raise ProtocolError("not_found", f"gradcheck of {layer!r}: {e}") from None
    except Exception as e:
        raise ProtocolError("internal", f"gradcheck of {layer!r} failed: {type(e).__name__}: {e}") from None
    reports = context.sources.gradcheck_reports() or []
    if not any(r is report for r in reports):
        reports = [*reports, report]
    return payloads.gradcheck_reports(reports, req["id"])


HANDLERS: dict[str, Handler] = {
    "hello": hello,
    "get_snapshot": get_snapshot,
    "get_layer": get_layer,
    "get_gradcheck_reports": get_gradcheck_reports,
    "run_gradcheck": run_gradcheck,
    "open_recording": open_recording,
    "get_compare": get_compare,
    "get_heatmap": get_heatmap,
}
