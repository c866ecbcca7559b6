"""Loads protocol/schema.json, reads the protocol's facts from it and validates messages against it.

The schema is the contract with the TypeScript side: the kernel checks every incoming request
against it before looking at any field, and tests check every outgoing message too.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ProtocolError

MAX_REQUEST_BYTES = 16 * 1024  # JSON-encoded size of one incoming message, checked before the schema


def schema_path() -> Path:
    """The installed copy (wheel: gradsight/protocol/) or the repository's (editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "protocol" / "schema.json", here.parents[1] / "protocol" / "schema.json"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "gradsight protocol schema.json not found next to the package or in the repository"
    )


@functools.lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    with open(schema_path(), encoding="utf-8") as f:
        return json.load(f)


def definition(name: str) -> Any:
    """One entry of the schema's definitions (its lists and bounds are read from here)."""
    return load_schema()["definitions"][name]


PROTOCOL_VERSION: int = definition("envelope")["properties"]["v"]["const"]  # apart from the package version
REQUEST_KINDS: tuple[str, ...] = tuple(definition("request_kind")["enum"])
REPLY_KINDS: tuple[str, ...] = tuple(definition("reply_kind")["enum"])


if TYPE_CHECKING:
    import jsonschema


@functools.lru_cache(maxsize=32)
def _validator(definition: str) -> jsonschema.Draft7Validator:
    import jsonschema  # on first message, not on `import gradsight` (~0.1 s)

    schema = load_schema()
    sub = {"$ref": f"#/definitions/{definition}", "definitions": schema["definitions"]}
    return jsonschema.Draft7Validator(sub)


def _first_error(definition: str, message: Any) -> str | None:
    errors = sorted(_validator(definition).iter_errors(message), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    e = errors[0]
    where = "/".join(str(p) for p in e.absolute_path) or "(message)"
    return f"{where}: {e.message}"[:500]


def _check_envelope(message: Any) -> tuple[str, str | None]:
    """The message's kind and readable id, or ProtocolError naming what is wrong."""
    if not isinstance(message, dict):
        raise ProtocolError("bad_message", f"a message is a JSON object, got {type(message).__name__}")
    raw_id = message.get("id")
    request_id = raw_id if isinstance(raw_id, str) and _first_error("request_id", raw_id) is None else None
    if "v" in message and message["v"] != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {str(message['v'])[:16]!r} is not supported; this kernel speaks v{PROTOCOL_VERSION}",
            request_id,
        )
    problem = _first_error("envelope", message)
    if problem is not None:
        kind = message.get("kind")
        if isinstance(kind, str) and problem.startswith("kind:"):
            raise ProtocolError("unknown_kind", f"unknown message kind {kind[:64]!r}", request_id)
        raise ProtocolError("bad_message", problem, request_id)
    return message["kind"], request_id


def _check_kind(kind: str, request_id: str | None, message: dict[str, Any]) -> None:
    problem = _first_error(kind, message)
    if problem is not None:
        raise ProtocolError("bad_message", f"{kind}: {problem}", request_id, kind)


def validate(message: Any) -> None:
    """Raise ProtocolError unless `message` is a valid message of its kind (either direction)."""
    kind, request_id = _check_envelope(message)
    _check_kind(kind, request_id, message)


def _exceeds(data: Any, limit: int) -> bool:
    """True when the JSON form of ``data`` is surely longer than ``limit``, found by walking at
    most ~``limit`` items: every value takes at least one byte, a string its length."""
    total, stack = 0, [data]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            total += len(x) + 2
        elif isinstance(x, dict):
            total += 2 + len(x)
            for k, v in x.items():
                total += (len(k) + 3) if isinstance(k, str) else 1
                stack.append(v)
        elif isinstance(x, list | tuple):
            total += 2 + len(x)
            if total > limit:
                return True
            stack.extend(x)
        else:
            total += 1
        if total > limit:
            return True
    return False


def parse_request(data: Any, buffers: list | None = None) -> dict[str, Any]:
    """Check one incoming comm payload: bounded, buffer-free, valid, and a request kind."""
    if buffers:
        raise ProtocolError("bad_message", "requests carry no binary buffers")
    if _exceeds(data, MAX_REQUEST_BYTES):  # before serialising: a huge array costs nothing
        raise ProtocolError("too_large", f"request is over {MAX_REQUEST_BYTES} bytes (the limit)")
    try:
        size = len(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ProtocolError("bad_message", f"not plain JSON: {e}") from None
    if size > MAX_REQUEST_BYTES:
        raise ProtocolError("too_large", f"request is {size} bytes; the limit is {MAX_REQUEST_BYTES}")
    kind, request_id = _check_envelope(data)
    if kind not in REQUEST_KINDS:
        raise ProtocolError(
            "unknown_kind", f"{kind!r} is sent by the kernel, not a request", request_id, kind
        )
    _check_kind(kind, request_id, data)
    return data
