"""Per-tensor summaries against a naive numpy re-implementation."""

import numpy as np
import pytest
import torch

from gradsight.kernel_hooks.summary import combine, measure, summarize
from gradsight.records.fields import FIELDS, F
from gradsight.records.metrics import tensor_stats


def naive(x: np.ndarray) -> dict:
    x = x.astype(np.float64).ravel()
    fin = x[np.isfinite(x)]
    return {"n": x.size, "sum": x.sum(), "sumsq": (x * x).sum(), "min": x.min(), "max": x.max(),
            "nonzero": int(((x != 0) & ~np.isnan(x)).sum()), "nan": int(np.isnan(x).sum()),
            "posinf": int(np.isposinf(x).sum()), "neginf": int(np.isneginf(x).sum()), "finite": fin}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_summary_matches_numpy(dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(37, 53, generator=g) * 3 + 0.5).to(dtype)
    x[0, :5] = 0
    row = summarize(x).double().numpy()
    ref = naive(x.float().numpy())
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-3
    assert row[F["sum"]] == pytest.approx(ref["sum"], rel=tol, abs=tol)
    assert row[F["sumsq"]] == pytest.approx(ref["sumsq"], rel=tol)
    assert row[F["min"]] == pytest.approx(ref["min"]) and row[F["max"]] == pytest.approx(ref["max"])
    assert row[F["nonzero"]] == ref["nonzero"]
    assert row[F["nan"]] == row[F["posinf"]] == row[F["neginf"]] == 0
    stats = tensor_stats(row[None, :], np.array([x.numel()]))
    v = x.float().numpy().astype(np.float64)
    assert stats["mean"][0] == pytest.approx(v.mean(), rel=1e-4, abs=1e-5)
    assert stats["std"][0] == pytest.approx(v.std(), rel=1e-4)
    assert stats["norm"][0] == pytest.approx(np.linalg.norm(v), rel=1e-5)
    assert stats["zero_frac"][0] == pytest.approx((v == 0).mean())


@pytest.mark.parametrize("nan", [False, True])
def test_large_tensors_take_the_chunked_count_and_parallel_min_max(nan):
    """Above PARALLEL_MIN / the count's chunk size the CPU row takes other code paths
    (torch's aminmax, a chunked != 0 count): the same numbers as the naive reference."""
    from gradsight.kernel_hooks.summary import _CHUNK, PARALLEL_MIN

    g = torch.Generator().manual_seed(2)
    n = max(PARALLEL_MIN, _CHUNK) * 3 + 17  # not a multiple of the chunk: a short last chunk
    x = torch.relu(torch.randn(n, generator=g)) - 0.25
    x[::97] = 0.0
    x[5] = -0.0
    x[-1] = 7.5  # the maximum sits in the short last chunk
    if nan:
        x[_CHUNK + 3] = float("nan")
    row = summarize(x).double().numpy()
    ref = naive(x.numpy())
    assert row[F["nonzero"]] == ref["nonzero"]
    assert row[F["nan"]] == (1 if nan else 0)
    if not nan:
        assert (row[F["min"]], row[F["max"]]) == (ref["min"], ref["max"]) == (-0.25, 7.5)


def test_nonfinite_values_are_counted_not_dropped():
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), float("-inf"), 0.0, -2.0, float("nan")])
    row = summarize(x).numpy()
    assert (row[F["nan"]], row[F["posinf"]], row[F["neginf"]]) == (2, 1, 2)
    assert row[F["nonzero"]] == naive(x.numpy())["nonzero"] == 5
    # the light (every-step) summary of a non-finite tensor is the full one on CPU
    assert np.array_equal(measure(x, detail=False).numpy(), row, equal_nan=True)


def test_light_summary_is_the_sum_of_squares():
    """On CPU a Python float: the buffer is host memory there, so the hook writes it directly."""
    x = torch.randn(1000)
    light = measure(x, detail=False)
    assert type(light) is float and light == pytest.approx(float((x.double() ** 2).sum()), rel=1e-5)
    half = measure(x.to(torch.bfloat16).view(10, 100).t(), detail=False)  # any dtype, any layout
    assert half == pytest.approx(float((x.to(torch.bfloat16).double() ** 2).sum()), rel=1e-5)


def test_combining_rows_equals_summarising_the_concatenation():
    a, b = torch.randn(100) * 2, torch.randn(57) - 3
    b[3] = float("inf")
    merged = combine(summarize(a), summarize(b)).numpy()
    whole = summarize(torch.cat([a, b])).numpy()
    for name in FIELDS:
        if name in ("sum", "sumsq"):  # inf + anything stays inf
            continue
        assert merged[F[name]] == pytest.approx(whole[F[name]], rel=1e-5), name


def test_empty_tensor_does_not_crash():
    row = summarize(torch.empty(0, 4)).numpy()
    assert row[F["sumsq"]] == 0 and row[F["nonzero"]] == 0


@pytest.mark.parametrize("values", [
    [1.0, float("nan"), float("inf"), -float("inf"), float("-inf"), 0.0, -2.0, float("nan")],
    [0.0, -0.0, 3.5, -1.25, 0.0, 7.0],
])
def test_the_accelerator_row_equals_the_host_row(values):
    """The device path (no host reads) gives the row the CPU path gives, field by field: it
    runs only on a GPU in use, so it is checked here on CPU tensors against the naive count."""
    from gradsight.kernel_hooks.summary import device_row, sum_of_squares

    x = torch.tensor(values)
    dev = device_row(x, x.sum(), sum_of_squares(x)).numpy()
    host = summarize(x).numpy()
    assert np.array_equal(dev, host, equal_nan=True)
    ref = naive(x.numpy())
    assert (dev[F["nonzero"]], dev[F["nan"]], dev[F["posinf"]], dev[F["neginf"]]) == \
        (ref["nonzero"], ref["nan"], ref["posinf"], ref["neginf"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_accelerator_light_summary_writes_what_the_full_row_says(dtype):
    """The device light path (sum of squares and non-finite counts as tensors, written into
    the step buffer, added on a second call) forced onto CPU tensors, against the full row."""
    from gradsight.kernel_hooks.step_buffer import StepBuffer
    from gradsight.kernel_hooks.summary import Light

    a = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0, -2.0, float("nan")]).to(dtype)
    b = (torch.randn(5, 3) * 4).to(dtype)
    buf = StepBuffer(1, 0, torch.device("cpu"), [])
    for x in (a, b):
        light = measure(x, detail=False, host=False)
        assert type(light) is Light
        buf.write_light(0, light.sumsq, light.counts, x.numel())
    full = summarize(torch.cat([a, b.reshape(-1)])).numpy()
    row = buf.stats[0].numpy()
    assert np.isnan(row[F["sumsq"]]) and np.isnan(full[F["sumsq"]])
    assert (row[F["nan"]], row[F["posinf"]], row[F["neginf"]]) == (2, 1, 1)
    assert np.array_equal(row[[F["nan"], F["posinf"], F["neginf"]]], full[[F["nan"], F["posinf"], F["neginf"]]])
    assert np.isnan(row[[F["sum"], F["min"], F["max"], F["nonzero"]]]).all()  # not measured on a light step
    buf.reset()
    light = measure(b, detail=False, host=False)
    buf.write_light(0, light.sumsq, light.counts, b.numel())
    assert buf.stats[0, F["sumsq"]].item() == pytest.approx(summarize(b)[F["sumsq"]].item(), rel=1e-5)
    assert buf.stat_numel[0] == b.numel()
