"""Arrow arrays from numpy arrays and Python strings, built from their buffers.

`pa.array` first asks whether its argument is a pandas object, and asking imports pandas:
0.25-0.3 s of every process that writes an output (a worker's first shard, each `m3pipe
encode`), for a library the output never uses. These build the same arrays without asking
(tests/schemas/test_arrow_arrays.py compares them with `pa.array`'s), sharing numeric
arrays' memory instead of copying it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa


def numeric_array(values: np.ndarray) -> pa.Array:
    """A 1-D numeric or bool numpy array as an Arrow array of its type (no nulls)."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"a 1-D array is needed, not {values.ndim}-D")
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    if values.dtype.byteorder == ">":
        values = values.astype(values.dtype.newbyteorder("<"))
    values = np.ascontiguousarray(values)
    kind = pa.from_numpy_dtype(values.dtype)
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


def string_array(values: Sequence[str]) -> pa.StringArray:
    """Python strings (no None) as an Arrow string array; raises UnicodeEncodeError on a
    string UTF-8 cannot hold (a lone surrogate), as `pa.array` raises on it."""
    encoded = [value.encode("utf-8") for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(item) for item in encoded], out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError("more than 2 GiB of strings in one array")
    return pa.StringArray.from_buffers(
        len(encoded), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))
    )
