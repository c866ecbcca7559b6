"""protocol/schema.json and its fixtures: the contract both the kernel and the panel test against."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gradsight.comm import limits, payloads
from gradsight.comm.buffers import Packer, unpack
from gradsight.comm.errors import ProtocolError
from gradsight.comm.schema import (
    PROTOCOL_VERSION,
    REPLY_KINDS,
    REQUEST_KINDS,
    load_schema,
    parse_request,
    validate,
)

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
    assert not set(REQUEST_KINDS) & set(REPLY_KINDS)


@pytest.mark.parametrize("direction", ["request", "reply"])
def test_each_direction_lists_its_kinds_once(direction):
    """request_kind/reply_kind are the lists; each kind's definition and the direction's union agree."""
    d = load_schema()["definitions"]
    kinds = d[f"{direction}_kind"]["enum"]
    assert [r["$ref"].rsplit("/", 1)[1] for r in d[direction]["oneOf"]] == kinds
    for kind in kinds:
        assert d[kind]["properties"]["kind"] == {"const": kind}
    assert {"$ref": f"#/definitions/{direction}"} in load_schema()["oneOf"]


def test_schema_metric_names_are_the_watchers_layer_metrics():
    """records.metrics computes the metrics (the source of truth); the schema, and through the
    generated types the panel, must name the same columns in the same order."""
    from gradsight.records.metrics import LAYER_METRICS

    assert load_schema()["definitions"]["layer_metric"]["enum"] == list(LAYER_METRICS)


def test_histogram_kinds_and_severities_are_the_records():
    """One order everywhere: the schema's lists are records.HIST_KINDS and detectors' SEVERITIES."""
    from gradsight.detectors.finding import SEVERITIES
    from gradsight.records import HIST_KINDS

    d = load_schema()["definitions"]
    assert d["of"]["enum"] == list(HIST_KINDS)
    assert d["severity"]["enum"] == list(SEVERITIES) == list(payloads.SEVERITIES)
    assert d["layer"]["properties"]["histograms"]["required"] == d["of"]["enum"]
    assert list(d["layer"]["properties"]["histograms"]["properties"]) == d["of"]["enum"]
    assert tuple(d["of"]["enum"]) == payloads.HISTOGRAM_KINDS


def test_protocol_version_is_the_schemas_not_the_packages():
    d = load_schema()["definitions"]
    assert PROTOCOL_VERSION == d["envelope"]["properties"]["v"]["const"] == d["status"]["properties"]["protocol"]["const"]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_validates_and_round_trips(path):
    fixture = _load(path)
    msg = fixture["message"]
    validate(msg)
    assert json.loads(json.dumps(msg, allow_nan=False)) == msg  # plain JSON, no NaN
    buffers = _buffers(fixture)
    refs = _refs(msg)
    assert sorted({r["buffer"] for r in refs}) == list(range(len(buffers))), "each buffer referenced"
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
    assert d["name"]["maxLength"] == d["short_text"]["maxLength"] == limits.MAX_SHORT_TEXT
    assert limits.PUSH_HIST_STEPS <= limits.MAX_HIST_STEPS
    assert all(isinstance(getattr(limits, n), int) and getattr(limits, n) > 0 for n in limits.__all__
               if n.startswith("MAX_") and n != "MAX_PUSH_SHARE")


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


def _scaled_grad_watcher(scales):
    """A real watcher whose gradients span different decades at each step, so that each step's
    histogram gets different edges (rebin fits them to the step's range)."""
    torch = pytest.importorskip("torch")
    import gradsight as gs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    w = gs.watch(model, histogram_every=1)
    x = torch.randn(16, 4)
    for scale in scales:
        model.zero_grad()
        (model(x).sum() * scale).backward()
        w.step()
    return w


def _mean_log_magnitude(edges, counts):
    """Count-weighted mean of log10 |value| over the positive side (bin centres in log space)."""
    half = len(counts) // 2
    pos = edges[half + 1:]
    logs = np.log10(pos)
    lo = np.concatenate([[logs[0] - (logs[1] - logs[0])], logs[:-1]])
    centres = (lo + logs) / 2
    c = counts[half:]
    return float((centres * c).sum() / c.sum())


@pytest.mark.filterwarnings("ignore::gradsight.GradsightWarning")  # the scaled steps look like explosions
def test_layer_histograms_share_one_grid_across_steps():
    """The panel overlays a layer's histograms over steps bin by bin: before the fix each step
    came with its own edges and older steps were drawn against the newest step's labels."""
    w = _scaled_grad_watcher([1.0, 1e3, 1e-3])
    try:
        originals = [w.histogram("0", of="grad", step=s) for s in w.histogram_steps("0", of="grad")]
        assert len(originals) == 3
        assert not np.allclose(originals[0].edges, originals[1].edges), "precondition: edges differ per step"
        msg, buffers = payloads.layer(w, "0", 24)
        validate(msg)
        series = msg["histograms"]["grad"]
        assert len({h["edges"]["buffer"] for h in series}) == 1, "one edges buffer for the whole series"
        edges = unpack(series[0]["edges"], buffers)
        half = (len(edges) - 1) // 2
        assert edges[half] == 0 and np.all(np.diff(edges) > 0)
        for h, orig in zip(series, originals, strict=True):
            counts = unpack(h["counts"], buffers)
            assert counts.shape == (len(edges) - 1,)
            assert counts.sum() == pytest.approx(orig.counts.sum())  # nothing dropped
            assert counts[:half].sum() == pytest.approx(orig.counts[: len(orig.counts) // 2].sum())  # signs kept
            assert (h["zero"], h["nan"]) == (orig.zero, orig.nan)
            # the mass sits where the original has it (within one grid cell)
            cell = np.log10(edges[-1]) - np.log10(edges[-2])
            assert _mean_log_magnitude(edges, counts) == pytest.approx(
                _mean_log_magnitude(orig.edges, orig.counts.astype(float)), abs=cell)
        means = [_mean_log_magnitude(edges, unpack(h["counts"], buffers)) for h in series]
        assert means[1] - means[0] == pytest.approx(3, abs=0.5) and means[0] - means[2] == pytest.approx(3, abs=0.5)
    finally:
        w.close()


def test_common_grid_of_one_histogram_keeps_its_counts():
    """A single histogram regridded onto its own range keeps its counts."""
    w = _scaled_grad_watcher([1.0])
    try:
        orig = w.histogram("0", of="grad")
        p = Packer()
        (h,) = payloads.on_common_grid([payloads.Hist.of(orig, 0)], p)
        counts = unpack(h["counts"], p.buffers)
        assert counts.sum() == pytest.approx(orig.counts.sum())
        assert len(counts) == len(orig.counts)
    finally:
        w.close()


def test_the_version_is_package_json_s():
    """package.json is the one place; the installed metadata (hatch-nodejs-version) and a
    source checkout both answer with it, and the panel is told it in status."""
    import gradsight

    class NoSources:  # what payloads.status reads of a source of watchers
        registry = None

        def watchers(self):
            return []

        def gradcheck_reports(self):
            return None

    expected = json.loads((ROOT / "package.json").read_text())["version"]
    assert gradsight.__version__ == expected
    msg, _ = payloads.status(NoSources())
    validate(msg)
    assert msg["gradsight_version"] == expected and msg["protocol"] == PROTOCOL_VERSION


def test_a_source_checkout_reads_package_json(monkeypatch):
    from importlib.metadata import PackageNotFoundError

    from gradsight import _version

    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(_version, "version", missing)
    assert _version._package_version() == json.loads((ROOT / "package.json").read_text())["version"]


def test_findings_carry_status_and_affected_to_the_panel():
    """A suspicion (window not yet filled) reaches the panel as such, with the layers its one
    cause covers; the row validates against the schema's finding definition."""
    import jsonschema
    import torch
    from torch import nn

    import gradsight as gs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # every unit of the ReLU is dead from the first step
    w = gs.watch(model)
    model(torch.randn(32, 8)).sum().backward()
    w.step()
    rows = payloads.findings(w.findings())["rows"]
    w.close()
    dead = [r for r in rows if r["kind"] == "dead_units"]
    assert dead and dead[0]["status"] in ("suspected", "confirmed")
    assert isinstance(dead[0]["affected"], list)
    schema = load_schema()
    for r in rows:
        jsonschema.validate(r, {"$ref": "#/definitions/finding", "definitions": schema["definitions"]})
    assert payloads.finding_row({"step": 1, "kind": "x", "severity": "info", "message": "m",
                                 "status": "suspected", "affected": ("a", "b")})["affected"] == ["a", "b"]
    assert payloads.finding_row({"step": 1, "kind": "x", "severity": "info", "message": "m",
                                 "status": float("nan"), "affected": float("nan")})["status"] == "confirmed"
