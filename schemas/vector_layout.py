"""How the ColBERT column is laid out in Parquet, and how to read it back as numpy.

Logically `colbert` is list<fixed_size_list<float16|float32>[D]>: a matrix of D-dim token
vectors per row. Output format 1 stored it that way, and Parquet encodes every float of it as
a value of its own (~7 ms of CPU per 512-token document at float16, seven times the
bytes' write). Output format 2 stores each vector as one little-endian fixed_size_binary of
D * itemsize bytes, `list<fixed_size_binary(2048)>` for bge-m3 at float16, uncompressed (zstd
saved 8% on a trained encoder's vectors for 1.6-2.4x the write time; docs/pipeline.md): the same
bytes, written at memory speed. The field's metadata names the float type and the dimension,
so a reader needs nothing else:

    np.frombuffer(b"".join(row), "<f2").reshape(-1, 1024)   # one row's list of bytes

Readers in m3pipe go through `colbert_vectors`, which reads both formats.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa

from schemas.options import StorageDtype

OUTPUT_FORMAT = 2  # 1: colbert as list<fixed_size_list<float>>; 2: list<fixed_size_binary>
VECTOR_KEY, DIM_KEY = b"m3pipe.vector", b"m3pipe.dim"  # the colbert field's metadata
STORED_NUMPY: dict[StorageDtype, np.dtype] = {  # each storage dtype, little-endian
    StorageDtype.FLOAT16: np.dtype("<f2"),
    StorageDtype.FLOAT32: np.dtype("<f4"),
}


def colbert_field(dtype: StorageDtype, dim: int) -> pa.Field:
    """The colbert column of output format 2, saying in its metadata how to decode it."""
    width = STORED_NUMPY[dtype].itemsize * dim
    metadata = {VECTOR_KEY: f"{dtype.value} little-endian".encode(), DIM_KEY: str(dim).encode()}
    return pa.field("colbert", pa.list_(pa.binary(width)), nullable=False, metadata=metadata)


def colbert_array(offsets: np.ndarray, vectors: np.ndarray) -> pa.ListArray:
    """Row `i` holds vectors[offsets[i]:offsets[i+1]]; the bytes are shared, not copied."""
    vectors = np.ascontiguousarray(vectors)
    if vectors.dtype.byteorder == ">":
        raise ValueError("vectors must be little-endian")
    width = vectors.shape[1] * vectors.dtype.itemsize
    values = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(vectors), [None, pa.py_buffer(vectors)]
    )
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def _vector_dtype(field: pa.Field) -> np.dtype:
    meta = field.metadata or {}
    kind = meta.get(VECTOR_KEY, b"").decode().split(" ")[0]
    if kind not in {d.value for d in StorageDtype}:
        raise ValueError(f"column {field.name!r} does not say how its vectors are stored")
    return STORED_NUMPY[StorageDtype(kind)]


def colbert_vectors(
    column: pa.Array | pa.ChunkedArray, field: pa.Field
) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [rows + 1], vectors [n, D]) of a colbert column of either output format,
    vectors in their stored float type. `field` is the column's field in its schema."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise ValueError("colbert column has null rows")
    offsets = np.asarray(array.offsets, dtype=np.int64)
    inner = array.values.slice(offsets[0], offsets[-1] - offsets[0])
    offsets = offsets - offsets[0]
    if pa.types.is_fixed_size_list(inner.type):  # output format 1
        dim = inner.type.list_size
        floats = inner.flatten().to_numpy(zero_copy_only=False)
        return offsets, floats.reshape(len(inner), dim)
    dtype = _vector_dtype(field)
    width = inner.type.byte_width
    data = inner.buffers()[1]
    assert data is not None
    raw = np.frombuffer(data, dtype=np.uint8, count=width * len(inner), offset=inner.offset * width)
    return offsets, raw.view(dtype).reshape(len(inner), width // dtype.itemsize)


def colbert_rows(column: pa.Array | pa.ChunkedArray, field: pa.Field) -> list[np.ndarray]:
    """One [n_i, D] matrix per row (views into the column's bytes)."""
    offsets, vectors = colbert_vectors(column, field)
    return [vectors[start:end] for start, end in itertools.pairwise(offsets)]


def upgrade_colbert(table: pa.Table, dtype: StorageDtype) -> pa.Table:
    """`table` with a format-1 colbert column rewritten in format 2 (others as they are)."""
    if "colbert" not in table.column_names:
        return table
    index = table.schema.get_field_index("colbert")
    field = table.schema.field(index)
    if not pa.types.is_fixed_size_list(field.type.value_type):
        return table
    offsets, vectors = colbert_vectors(table.column(index), field)
    stored = vectors.astype(STORED_NUMPY[dtype], copy=False)
    new_field = colbert_field(dtype, vectors.shape[1])
    return table.set_column(index, new_field, colbert_array(offsets, stored))
