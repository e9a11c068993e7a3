"""The ColBERT column's physical layout (output format 2) and reading both formats back."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.retrieval.index import batch_vectors
from schemas.options import StorageDtype
from schemas.vector_layout import (
    colbert_array,
    colbert_field,
    colbert_rows,
    colbert_vectors,
    upgrade_colbert,
)

DTYPES = {StorageDtype.FLOAT16: np.float16, StorageDtype.FLOAT32: np.float32}


def matrix(counts: list[int], dim: int, dtype: StorageDtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((sum(counts), dim)).astype(DTYPES[dtype])


def format_1(offsets: np.ndarray, vectors: np.ndarray) -> pa.ListArray:
    values = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 9), min_size=1, max_size=12),
    dim=st.integers(1, 16),
    dtype=st.sampled_from(list(StorageDtype)),
    cut=st.integers(0, 12),
)
def test_written_vectors_read_back_bit_for_bit_in_both_formats(tmp_path_factory, counts, dim,
                                                               dtype, cut):  # fmt: skip
    vectors = matrix(counts, dim, dtype)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    field = colbert_field(dtype, dim)
    path = tmp_path_factory.mktemp("layout") / "p.parquet"
    table = pa.Table.from_arrays([colbert_array(offsets, vectors)], schema=pa.schema([field]))
    pq.write_table(table, path, store_schema=True)
    back = pq.read_table(path)
    got_offsets, got = colbert_vectors(back.column("colbert"), back.schema.field("colbert"))
    assert got.dtype == DTYPES[dtype] and np.array_equal(got_offsets, offsets)
    assert got.tobytes() == vectors.tobytes()
    # A slice (a reader's batch, a reused run) decodes to its own rows only.
    start = min(cut, len(counts))
    sliced = back.slice(start)
    rows = colbert_rows(sliced.column("colbert"), field)
    want = [vectors[a:b] for a, b in zip(offsets[start:-1], offsets[start + 1 :], strict=True)]
    assert all(np.array_equal(r, w) for r, w in zip(rows, want, strict=True))
    assert len(rows) == len(want)
    # Format 1 reads the same and upgrades to format 2 unchanged.
    old = pa.table({"colbert": format_1(offsets, vectors)})
    old_offsets, old_vectors = colbert_vectors(old.column("colbert"), old.schema.field(0))
    assert np.array_equal(old_offsets, offsets) and old_vectors.tobytes() == vectors.tobytes()
    upgraded = upgrade_colbert(old, dtype)
    assert upgraded.schema.field("colbert").equals(field, check_metadata=True)
    assert colbert_vectors(upgraded.column(0), field)[1].tobytes() == vectors.tobytes()


def test_a_column_that_does_not_say_its_float_type_is_refused():
    array = colbert_array(np.array([0, 2]), np.zeros((2, 4), np.float16))
    with pytest.raises(ValueError, match="does not say how its vectors are stored"):
        colbert_vectors(array, pa.field("colbert", array.type))
    with pytest.raises(ValueError, match="little-endian"):
        colbert_array(np.array([0, 1]), np.zeros((1, 4), ">f2"))


def test_search_reads_an_output_of_either_format():
    vectors = matrix([3, 2], 8, StorageDtype.FLOAT16)
    offsets = np.array([0, 3, 5])
    ids = ["a", "b"]
    new = pa.RecordBatch.from_arrays(
        [pa.array(ids), colbert_array(offsets, vectors)],
        schema=pa.schema([pa.field("id", pa.string()), colbert_field(StorageDtype.FLOAT16, 8)]),
    )
    old = pa.RecordBatch.from_arrays(
        [pa.array(ids), format_1(offsets, vectors)], names=["id", "colbert"]
    )
    for batch in (new, old):
        got, starts = batch_vectors(batch, ids)
        assert np.array_equal(got.colbert_offsets, offsets)
        np.testing.assert_array_equal(got.colbert, vectors.astype(np.float32))
        assert list(starts) == [0, 1, 2]
