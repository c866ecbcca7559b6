"""Arrays travel as comm buffers; the JSON names them (buffer index, dtype, shape).

Never JSON lists of floats: NaN/Inf survive as IEEE values, and a histogram series stays a
few memcpy's instead of thousands of JSON numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_DTYPES = {
    np.dtype("float64"): "float64",
    np.dtype("float32"): "float32",
    np.dtype("int64"): "int64",
    np.dtype("int32"): "int32",
    np.dtype("uint32"): "uint32",
}


class Packer:
    """Collects the buffers of one outgoing message; `ref()` returns the ArrayRef to put in the JSON."""

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []

    def ref(self, values: Any, dtype: str = "float64") -> dict[str, Any]:
        arr = np.ascontiguousarray(np.asarray(values, dtype=np.dtype(dtype).newbyteorder("<")))
        if arr.ndim == 0:
            arr = arr.reshape(1)
        name = _DTYPES[np.dtype(dtype)]
        self.buffers.append(memoryview(arr.tobytes()))
        return {"buffer": len(self.buffers) - 1, "dtype": name, "shape": list(arr.shape)}


def unpack(ref: dict[str, Any], buffers: list[Any]) -> np.ndarray:
    """The inverse of Packer.ref (used by tests and by anyone reading a recorded message)."""
    raw = buffers[ref["buffer"]]
    dtype = np.dtype(ref["dtype"]).newbyteorder("<")
    arr = np.frombuffer(bytes(raw), dtype=dtype)
    expected = math.prod(ref["shape"])
    if arr.size != expected:
        raise ValueError(
            f"buffer {ref['buffer']} holds {arr.size} {ref['dtype']} values, shape says {expected}"
        )
    return arr.reshape(ref["shape"])
