"""protocol/schema.json and its fixtures: the contract both the kernel and the panel test against."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gradsight.comm import limits
from gradsight.comm.buffers import Packer, unpack
from gradsight.comm.errors import ProtocolError
from gradsight.comm.schema import REPLY_KINDS, REQUEST_KINDS, load_schema, parse_request, validate

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted((ROOT / "protocol" / "fixtures").glob("*.json"))
INVALID = sorted((ROOT / "protocol" / "fixtures" / "invalid").glob("*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _buffers(fixture: dict) -> list[bytes]:
    """Fixture buffers are listed as values (null = NaN) and encoded here as the kernel would."""
    out = []
    for b in fixture.get("buffers", []):
        vals = [math.nan if v is None else float(v) if isinstance(v, str) else v for v in b["values"]]
        out.append(np.asarray(vals, dtype=np.dtype(b["dtype"]).newbyteorder("<")).tobytes())
    return out


def _refs(obj) -> list[dict]:
    if isinstance(obj, dict):
        if set(obj) == {"buffer", "dtype", "shape"}:
            return [obj]
        return [r for v in obj.values() for r in _refs(v)]
    if isinstance(obj, list):
        return [r for v in obj for r in _refs(v)]
    return []


def test_schema_is_valid_draft7():
    import jsonschema

    jsonschema.Draft7Validator.check_schema(load_schema())


def test_every_kind_has_a_fixture():
    kinds = {_load(p)["message"]["kind"] for p in FIXTURES}
    assert kinds == set(REQUEST_KINDS) | set(REPLY_KINDS)
    assert set(load_schema()["definitions"]["kind"]["enum"]) == kinds


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_validates_and_round_trips(path):
    fixture = _load(path)
    msg = fixture["message"]
    validate(msg)
    assert json.loads(json.dumps(msg, allow_nan=False)) == msg  # plain JSON, no NaN
    buffers = _buffers(fixture)
    refs = _refs(msg)
    assert sorted(r["buffer"] for r in refs) == list(range(len(buffers))), "each buffer referenced once"
    for ref in refs:
        arr = unpack(ref, buffers)
        assert list(arr.shape) == ref["shape"]
    if msg["kind"] in REQUEST_KINDS:
        assert parse_request(msg) is msg


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_fixture_is_refused_with_its_code(path):
    fixture = _load(path)
    with pytest.raises(ProtocolError) as info:
        parse_request(fixture["message"])
    assert info.value.code == fixture["error_code"], info.value.message


def test_limits_mirror_schema():
    d = load_schema()["definitions"]
    assert d["snapshot"]["properties"]["layers"]["properties"]["names"]["maxItems"] == limits.MAX_LAYERS
    assert d["snapshot"]["properties"]["findings"]["properties"]["rows"]["maxItems"] == limits.MAX_FINDINGS
    assert d["histogram_series"]["maxItems"] == limits.MAX_HIST_STEPS
    assert d["get_layer"]["properties"]["max_steps"]["maximum"] == limits.MAX_HIST_STEPS
    assert d["gradcheck_reports"]["properties"]["reports"]["maxItems"] == limits.MAX_REPORTS
    assert d["gradcheck_report"]["properties"]["tensors"]["maxItems"] == limits.MAX_REPORT_TENSORS
    assert d["status"]["properties"]["watchers"]["maxItems"] == limits.MAX_WATCHERS
    assert d["columns"]["maxProperties"] == limits.MAX_COLUMNS
    assert d["text"]["maxLength"] == limits.MAX_TEXT
    assert d["name"]["maxLength"] == limits.MAX_SHORT_TEXT
    assert limits.PUSH_HIST_STEPS <= limits.MAX_HIST_STEPS


def test_oversized_request_is_refused_before_validation():
    big = {"v": 1, "kind": "hello", "id": "a", "client": {"name": "x" * (limits.MAX_REQUEST_BYTES + 1)}}
    with pytest.raises(ProtocolError) as info:
        parse_request(big)
    assert info.value.code == "too_large"


def test_requests_with_buffers_or_non_json_are_refused():
    with pytest.raises(ProtocolError, match="buffers"):
        parse_request({"v": 1, "kind": "hello", "id": "a"}, [b"\x00"])
    with pytest.raises(ProtocolError) as info:
        parse_request({"v": 1, "kind": "hello", "id": "a", "client": {"name": math.nan}})
    assert info.value.code == "bad_message"


def test_error_keeps_the_request_id_when_readable():
    with pytest.raises(ProtocolError) as info:
        parse_request({"v": 1, "kind": "get_layer", "id": "r-7", "watcher": "MLP"})
    assert (info.value.code, info.value.request_id, info.value.request_kind) == (
        "bad_message",
        "r-7",
        "get_layer",
    )
    assert "layer" in info.value.message


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64", "int32", "uint32"])
def test_packer_round_trips_every_dtype(dtype):
    p = Packer()
    values = np.array([[0, 1, 2], [3, 4, 5]], dtype=dtype)
    ref = p.ref(values, dtype)
    assert ref == {"buffer": 0, "dtype": dtype, "shape": [2, 3]}
    np.testing.assert_array_equal(unpack(ref, p.buffers), values)


def test_packer_keeps_non_finite_values():
    p = Packer()
    ref = p.ref([math.nan, math.inf, -math.inf, 1.5])
    got = unpack(ref, p.buffers)
    assert math.isnan(got[0]) and got[1] == math.inf and got[2] == -math.inf and got[3] == 1.5


def test_unpack_refuses_a_shape_that_does_not_match():
    p = Packer()
    ref = p.ref([1.0, 2.0])
    with pytest.raises(ValueError, match="holds 2"):
        unpack({**ref, "shape": [3]}, p.buffers)
