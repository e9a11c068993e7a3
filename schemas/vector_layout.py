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

Compact storage (`--colbert-storage`, `--dense-storage`; schemas/options.VectorForm) keeps the
same physical shape with other bytes, named in the same metadata:
- int8: each vector D int8 codes; its float32 scale in a column of its own (`colbert_scales`,
  a list beside each row's vectors; `dense_scale`, one a row): value = code * scale.
- binary: each vector ceil(D / 8) bytes of sign bits (numpy.packbits of value > 0; the
  bytes sentence-transformers' "ubinary" gives). m3pipe reads a bit as +-1 / sqrt(D), a unit
  vector, so scores keep the scale the hybrid's weights assume.
Dense int8 is `fixed_size_list<int8>[D]`, dense binary `fixed_size_binary(ceil(D / 8))`.
`colbert_floats` and `dense_floats` read every form back as float32.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa

from schemas.arrow_arrays import numeric_array
from schemas.options import StorageDtype, VectorForm

OUTPUT_FORMAT = 2  # 1: colbert as list<fixed_size_list<float>>; 2: list<fixed_size_binary>
VECTOR_KEY, DIM_KEY = b"m3pipe.vector", b"m3pipe.dim"  # the colbert field's metadata
STORED_NUMPY: dict[StorageDtype, np.dtype] = {  # each storage dtype, little-endian
    StorageDtype.FLOAT16: np.dtype("<f2"),
    StorageDtype.FLOAT32: np.dtype("<f4"),
}


INT8, BINARY = VectorForm.INT8.value, VectorForm.BINARY.value
SCALE_COLUMN = {"colbert": "colbert_scales", "dense": "dense_scale"}
_DESCRIPTION = {
    StorageDtype.FLOAT16.value: "float16 little-endian",
    StorageDtype.FLOAT32.value: "float32 little-endian",
    INT8: "int8 codes, times the float32 scale in {scales}",
    BINARY: "binary sign bits (numpy.packbits of value > 0)",
}


# Byte value -> its 8 bits as +-1, most significant first (numpy.packbits' order).
_SIGN_TABLE = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1) * np.float32(2) - 1


def stored_encoding(form: VectorForm, dtype: StorageDtype) -> str:
    """What a vector's bytes are: float16, float32 (`dtype` for the float form), int8, binary
    (the other forms are named by their encoding)."""
    return dtype.value if form is VectorForm.FLOAT else form.value


def vector_bytes(encoding: str, dim: int) -> int:
    """Bytes of one stored vector (a scale, when there is one, is in its own column)."""
    if encoding == BINARY:
        return math.ceil(dim / 8)
    if encoding == INT8:
        return dim
    return STORED_NUMPY[StorageDtype(encoding)].itemsize * dim


def _metadata(encoding: str, dim: int, column: str) -> dict[bytes, bytes]:
    description = _DESCRIPTION[encoding].format(scales=SCALE_COLUMN[column])
    return {VECTOR_KEY: description.encode(), DIM_KEY: str(dim).encode()}


def colbert_field(dtype: StorageDtype | str, dim: int) -> pa.Field:
    """The colbert column of output format 2, saying in its metadata how to decode it
    (`dtype`: a StorageDtype, or an encoding from `stored_encoding`)."""
    encoding = dtype.value if isinstance(dtype, StorageDtype) else dtype
    width = vector_bytes(encoding, dim)
    metadata = _metadata(encoding, dim, "colbert")
    return pa.field("colbert", pa.list_(pa.binary(width)), nullable=False, metadata=metadata)


def dense_field(encoding: str, dim: int) -> pa.Field:
    """The dense column: a fixed-size list of floats (exact, as ever), or a compact form's
    bytes a vector (int8 codes, packed sign bits) as one fixed-size binary, as ColBERT's
    (an int8 list, m3pipe's first compact outputs, is still read)."""
    if encoding in (BINARY, INT8):
        value_type = pa.binary(vector_bytes(encoding, dim))
        metadata = _metadata(encoding, dim, "dense")
        return pa.field("dense", value_type, nullable=False, metadata=metadata)
    floats = {"float16": pa.float16(), "float32": pa.float32()}
    return pa.field("dense", pa.list_(floats[encoding], dim), nullable=False)


def scale_field(column: str) -> pa.Field:
    """The float32 scales of an int8 column: a list per row for colbert, one for dense."""
    value_type = pa.list_(pa.float32()) if column == "colbert" else pa.float32()
    return pa.field(SCALE_COLUMN[column], value_type, nullable=False)


def colbert_array(offsets: np.ndarray, vectors: np.ndarray) -> pa.ListArray:
    """Row `i` holds vectors[offsets[i]:offsets[i+1]]; the bytes are shared, not copied."""
    vectors = np.ascontiguousarray(vectors)
    if vectors.dtype.byteorder == ">":
        raise ValueError("vectors must be little-endian")
    width = vectors.shape[1] * vectors.dtype.itemsize
    values = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(vectors), [None, pa.py_buffer(vectors)]
    )
    return pa.ListArray.from_arrays(numeric_array(offsets.astype(np.int32)), values)


def _stored(field: pa.Field) -> tuple[str, int]:
    """(encoding, dimension) from a vector column's metadata."""
    meta = field.metadata or {}
    encoding = meta.get(VECTOR_KEY, b"").decode().split(" ")[0]
    if encoding not in _DESCRIPTION:
        raise ValueError(f"column {field.name!r} does not say how its vectors are stored")
    try:
        dim = int(meta.get(DIM_KEY, b""))
    except ValueError:
        raise ValueError(f"column {field.name!r} does not say its dimension") from None
    return encoding, dim


def _vector_dtype(field: pa.Field) -> np.dtype:
    encoding, _ = _stored(field)
    if encoding in (INT8, BINARY):
        raise ValueError(f"column {field.name!r} holds {encoding} vectors, not floats")
    return STORED_NUMPY[StorageDtype(encoding)]


def _fixed_bytes(inner: pa.Array) -> np.ndarray:
    """[n, width] uint8 view of a fixed_size_binary array's bytes."""
    width = inner.type.byte_width
    data = inner.buffers()[1]
    assert data is not None
    raw = np.frombuffer(data, dtype=np.uint8, count=width * len(inner), offset=inner.offset * width)
    return raw.reshape(len(inner), width)


def decode(raw: np.ndarray, encoding: str, dim: int, scales: np.ndarray | None) -> np.ndarray:
    """[n, dim] float32 of `raw` vectors ([n, bytes] uint8) stored as `encoding`."""
    if encoding == BINARY:  # each byte looked up as its 8 values: one pass, as fast as fp16's
        table = _SIGN_TABLE * np.float32(1.0 / math.sqrt(dim))
        return table[raw].reshape(len(raw), -1)[:, :dim]
    if encoding == INT8:
        if scales is None or len(scales) != len(raw):
            raise ValueError("int8 vectors without a scale each")
        return raw.view(np.int8).astype(np.float32) * np.asarray(scales, np.float32)[:, None]
    return raw.view(STORED_NUMPY[StorageDtype(encoding)]).astype(np.float32)


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
    raw = _fixed_bytes(inner)
    return offsets, raw.view(dtype).reshape(len(inner), inner.type.byte_width // dtype.itemsize)


def _table_column(data: pa.Table | pa.RecordBatch, name: str) -> pa.Array:
    column = data.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def colbert_floats(data: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [rows + 1], float32 vectors [n, D]) of the colbert column in any form."""
    field = data.schema.field("colbert")
    array = _table_column(data, "colbert")
    if pa.types.is_fixed_size_list(array.type.value_type):  # output format 1
        offsets, vectors = colbert_vectors(array, field)
        return offsets, vectors.astype(np.float32)
    encoding, dim = _stored(field)
    if array.null_count:
        raise ValueError("colbert column has null rows")
    offsets = np.asarray(array.offsets, dtype=np.int64)
    inner = array.values.slice(offsets[0], offsets[-1] - offsets[0])
    scales = None
    if encoding == INT8:
        scale_lists = _table_column(data, SCALE_COLUMN["colbert"])
        scale_offsets = np.asarray(scale_lists.offsets, dtype=np.int64)
        if not np.array_equal(scale_offsets - scale_offsets[0], offsets - offsets[0]):
            raise ValueError("colbert_scales does not hold one scale a vector")
        flat = scale_lists.values.slice(scale_offsets[0], scale_offsets[-1] - scale_offsets[0])
        scales = flat.to_numpy(zero_copy_only=False)
    return offsets - offsets[0], decode(_fixed_bytes(inner), encoding, dim, scales)


def dense_floats(data: pa.Table | pa.RecordBatch) -> np.ndarray:
    """[rows, D] float32 of the dense column in any form."""
    field = data.schema.field("dense")
    array = _table_column(data, "dense")
    if pa.types.is_fixed_size_binary(array.type):
        encoding, dim = _stored(field)
        scales = None
        if encoding == INT8:
            scales = _table_column(data, SCALE_COLUMN["dense"]).to_numpy(zero_copy_only=False)
        return decode(_fixed_bytes(array), encoding, dim, scales)
    dim = array.type.list_size
    values = array.flatten().to_numpy(zero_copy_only=False)
    if pa.types.is_int8(array.type.value_type):
        scales = _table_column(data, SCALE_COLUMN["dense"]).to_numpy(zero_copy_only=False)
        return decode(values.view(np.uint8).reshape(len(array), dim), INT8, dim, scales)
    return np.asarray(values, dtype=np.float32).reshape(len(array), dim)


def colbert_rows(column: pa.Array | pa.ChunkedArray, field: pa.Field) -> list[np.ndarray]:
    """One [n_i, D] matrix per row (views into the column's bytes)."""
    offsets, vectors = colbert_vectors(column, field)
    return [vectors[start:end] for start, end in itertools.pairwise(offsets)]


def upgrade_vectors(table: pa.Table, dtype: StorageDtype) -> pa.Table:
    """`table` with its vector columns in today's layout: a format-1 colbert column in
    format 2, an int8 dense column of fixed-size int8 lists (the first compact outputs) as
    one fixed-size binary a vector; other columns as they are."""
    return _upgrade_int8_dense(upgrade_colbert(table, dtype))


def _upgrade_int8_dense(table: pa.Table) -> pa.Table:
    if "dense" not in table.column_names:
        return table
    index = table.schema.get_field_index("dense")
    array = _table_column(table, "dense")
    if not (pa.types.is_fixed_size_list(array.type) and pa.types.is_int8(array.type.value_type)):
        return table
    dim = array.type.list_size
    codes = array.flatten().to_numpy(zero_copy_only=False).view(np.uint8)
    field = dense_field(INT8, dim)
    upgraded = pa.FixedSizeBinaryArray.from_buffers(
        field.type, len(array), [None, pa.py_buffer(np.ascontiguousarray(codes))]
    )
    return table.set_column(index, field, upgraded)


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
