"""Compact storage as the engine writes it (issue 31): each form's bytes in each row's place,
read back from Parquet by the project's readers to what the formulas say, and the engine's
compact output equal to its exact output put through the same formulas."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine.compact_vectors import int8_per_vector, pool_tokens, sign_bits
from pipeline.engine.embedder import EmbedEngine
from pipeline.engine.encoder import BatchOutput
from pipeline.engine.table import POOL_WINDOW, ShardColumns, top_k_terms
from pipeline.testing.corpora import documents
from schemas.options import EncodeOptions, StorageDtype, VectorForm
from schemas.output import output_schema
from schemas.vector_layout import colbert_floats, dense_floats, vector_bytes


def expected_floats(vectors: np.ndarray, form: VectorForm, floats=np.float16) -> np.ndarray:
    """What a reader must get back for `vectors` stored as `form` (a float form: as
    `floats`), from the formulas."""
    values = np.asarray(vectors, np.float32)
    if form is VectorForm.INT8:
        scale = np.abs(values).max(axis=1, initial=0.0) / 127
        safe = np.where(scale > 0, scale, 1.0)[:, None]
        return np.clip(np.rint(values / safe), -127, 127) * scale[:, None].astype(np.float32)
    if form is VectorForm.BINARY:
        return np.where(values > 0, 1.0, -1.0) / np.float32(math.sqrt(values.shape[1]))
    if form is VectorForm.FLOAT32:
        return values
    return values.astype(np.float16 if form is VectorForm.FLOAT16 else floats).astype(np.float32)


def round_trip(arrays: dict[str, pa.Array], schema: pa.Schema, path) -> pa.Table:
    table = pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema)
    pq.write_table(table, path)
    return pq.read_table(path)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 9), min_size=1, max_size=10),
    dim=st.integers(1, 20),
    dense_form=st.sampled_from(list(VectorForm)),
    colbert_form=st.sampled_from(list(VectorForm)),
    pool=st.sampled_from([1, 1, 2, 3]),
    top_k=st.sampled_from([None, 1, 2]),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_form_lands_in_its_row_and_reads_back_as_the_formulas_say(
    tmp_path_factory, lengths, dim, dense_form, colbert_form, pool, top_k, seed
):
    rng = np.random.default_rng(seed)
    options = EncodeOptions(dtype=StorageDtype.FLOAT16, dense_storage=dense_form,
                            colbert_storage=colbert_form, colbert_pool=pool,
                            sparse_top_k=top_k)  # fmt: skip
    dense = rng.standard_normal((len(lengths), dim)).astype(np.float16)
    colbert = [rng.standard_normal((n - 1, dim)).astype(np.float16) for n in lengths]
    weights = [rng.permutation(np.arange(1, 5, dtype=np.float32))[: n % 5] for n in lengths]
    terms = [np.sort(rng.choice(50, len(w), replace=False)).astype(np.int32) for w in weights]
    columns = ShardColumns(np.array(lengths), options, dim, dim)
    for rows in np.array_split(rng.permutation(len(lengths)), rng.integers(1, 4)):
        if not len(rows):
            continue
        width = max(lengths[r] for r in rows)
        padded = np.full((len(rows), width - 1, dim), 9, np.float16)
        for place, row in enumerate(rows):
            padded[place, : lengths[row] - 1] = colbert[row]
        columns.add(BatchOutput(
            rows=rows, lengths=np.array(lengths)[rows], dense=dense[rows], colbert=padded,
            sparse_counts=np.array([len(terms[r]) for r in rows]),
            sparse_indices=np.concatenate([terms[r] for r in rows]),
            sparse_values=np.concatenate([weights[r] for r in rows]),
        ))  # fmt: skip
    schema = output_schema(options.modes, options.dtype, dim, dim, dense_form=dense_form,
                           colbert_form=colbert_form)  # fmt: skip
    arrays = {
        "id": pa.array([str(i) for i in range(len(lengths))]),
        "n_tokens": pa.array(lengths, pa.int32()),
        "truncated": pa.array([False] * len(lengths)),
        **columns.columns(),
    }
    back = round_trip(arrays, schema, tmp_path_factory.mktemp("forms") / "p.parquet")

    np.testing.assert_allclose(dense_floats(back), expected_floats(dense, dense_form), rtol=1e-6)
    offsets, vectors = colbert_floats(back)
    for row, row_vectors in enumerate(colbert):
        pooled = pool_tokens(row_vectors, pool, window=POOL_WINDOW)
        want = expected_floats(pooled if pool > 1 else row_vectors, colbert_form)
        got = vectors[offsets[row] : offsets[row + 1]]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert len(got) <= math.ceil((lengths[row] - 1) / pool)
    kept = back.column("sparse_indices").to_pylist()
    kept_weights = back.column("sparse_values").to_pylist()
    for row, (row_terms, row_weights) in enumerate(zip(terms, weights, strict=True)):
        k = len(row_terms) if top_k is None else min(top_k, len(row_terms))
        heaviest = set(row_terms[np.argsort(-row_weights, kind="stable")[:k]].tolist())
        assert set(kept[row]) == heaviest and kept[row] == sorted(kept[row])
        assert sorted(kept_weights[row], reverse=True) == sorted(row_weights, reverse=True)[:k]


@given(
    counts=st.lists(st.integers(0, 8), max_size=8),
    k=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_top_k_terms_keeps_each_rows_heaviest_in_their_order(counts, k, seed):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = np.concatenate([np.sort(rng.choice(100, n, replace=False)) for n in counts] or [[]])
    values = rng.choice([0.5, 1.0, 2.0], int(offsets[-1])).astype(np.float32)  # with ties
    new_offsets, new_indices, new_values = top_k_terms(offsets, indices.astype(np.int32),
                                                       values, k)  # fmt: skip
    for row, (start, end) in enumerate(itertools.pairwise(offsets)):
        # The reference: heaviest first, a tie to the lower token id, then in row order.
        ranked = sorted(range(start, end), key=lambda i: (-values[i], indices[i]))[:k]
        keep = sorted(ranked)
        got = slice(new_offsets[row], new_offsets[row + 1])
        assert new_indices[got].tolist() == indices[keep].tolist()
        assert new_values[got].tolist() == values[keep].tolist()


def test_pooling_a_long_document_clusters_a_window_at_a_time():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2 * POOL_WINDOW + 10, 4)).astype(np.float32)
    pooled = pool_tokens(vectors, 2, window=POOL_WINDOW)
    first = pool_tokens(vectors[:POOL_WINDOW], 2)
    assert len(pooled) <= POOL_WINDOW + 5 and np.array_equal(pooled[: len(first)], first)


@pytest.mark.parametrize("form", [VectorForm.INT8, VectorForm.BINARY])
def test_the_engines_compact_output_is_its_exact_output_through_the_formulas(tiny, form):
    """Same model, same documents: compact rows equal the exact rows quantised (exact in
    float32 here, so the quantisers see what the device handed over)."""
    docs = documents([f"text number {i} " * (1 + i % 9) for i in range(30)])
    exact = EncodeOptions(max_length=64, dtype=StorageDtype.FLOAT32)
    compact = EncodeOptions.model_validate(
        {**exact.model_dump(), "dense_storage": form, "colbert_storage": form, "sparse_top_k": 3}
    )
    want = EmbedEngine(tiny, exact).encode(docs).table
    got = EmbedEngine(tiny, compact).encode(docs).table
    offsets, vectors = colbert_floats(want)
    got_offsets, got_vectors = colbert_floats(got)
    assert np.array_equal(offsets, got_offsets)
    np.testing.assert_array_equal(got_vectors, expected_floats(vectors, form))
    np.testing.assert_array_equal(dense_floats(got), expected_floats(dense_floats(want), form))
    assert all(len(terms) <= 3 for terms in got.column("sparse_indices").to_pylist())
    width = got.schema.field("colbert").type.value_type.byte_width
    assert width == vector_bytes(form.value, tiny.colbert_dim)
    # The file says how it was stored; an exact file says nothing new.
    assert EmbedEngine(tiny, compact).file_metadata()["storage"] == {
        "dense_storage": form.value, "colbert_storage": form.value, "sparse_top_k": 3
    }  # fmt: skip
    assert "storage" not in EmbedEngine(tiny, exact).file_metadata()


@pytest.mark.parametrize(
    ("dtype", "dense", "colbert"),
    [
        (StorageDtype.FLOAT16, VectorForm.FLOAT32, VectorForm.FLOAT),
        (StorageDtype.FLOAT32, VectorForm.FLOAT, VectorForm.FLOAT16),
    ],
)
def test_a_float_width_per_column_keeps_each_as_computed(tiny, dtype, dense, colbert):
    """float32 dense beside float16 ColBERT (issue 31, item 2), and the other way round:
    each column holds exactly what a whole-job run of its width holds, and says so."""
    docs = documents([f"text number {i} " * (1 + i % 9) for i in range(20)])
    mixed = EncodeOptions(max_length=64, dtype=dtype, dense_storage=dense, colbert_storage=colbert)
    table = EmbedEngine(tiny, mixed).encode(docs).table
    half = EmbedEngine(tiny, EncodeOptions(max_length=64)).encode(docs).table
    full = EmbedEngine(tiny, EncodeOptions(max_length=64, dtype=StorageDtype.FLOAT32))
    whole = full.encode(docs).table
    assert table.schema.field("dense").type.value_type == pa.float32()
    assert table.schema.field("colbert").metadata[b"m3pipe.vector"].startswith(b"float16")
    np.testing.assert_array_equal(dense_floats(table), dense_floats(whole))
    np.testing.assert_array_equal(colbert_floats(table)[1], colbert_floats(half)[1])
    named = {"dense_storage": dense, "colbert_storage": colbert}
    want = {key: form.value for key, form in named.items() if form is not VectorForm.FLOAT}
    assert EmbedEngine(tiny, mixed).file_metadata()["storage"] == want


def test_int8_codes_are_what_the_quantiser_gives():
    """The int8 bytes on disk are int8_per_vector's codes (a reader's one-line decode)."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3, 8)).astype(np.float16)
    options = EncodeOptions(modes="colbert", colbert_storage="int8")
    columns = ShardColumns(np.array([4]), options, 8, 8)
    columns.add(BatchOutput(rows=np.array([0]), lengths=np.array([4]), colbert=vectors[None]))
    array = columns.columns()["colbert"]
    raw = np.frombuffer(b"".join(array.to_pylist()[0]), np.int8).reshape(-1, 8)
    codes, scales = int8_per_vector(vectors)
    assert np.array_equal(raw, codes)
    assert columns.columns()["colbert_scales"].to_pylist()[0] == scales.tolist()
    assert sign_bits(vectors).shape == (3, 1)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 40)),
    half=st.booleans(),
    zero_rows=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    block_bytes=st.integers(1, 800),
)
def test_forms_made_on_the_device_are_the_numpy_forms_bit_for_bit(
    shape, half, zero_rows, seed, block_bytes
):
    """pipeline/engine/device_forms.py (torch, where the vectors are made) against
    compact_vectors.py (numpy): the same bytes, whatever the dimension and float type, and
    on a CPU whether the int8 codes are made whole or a block of rows at a time."""
    import torch

    from pipeline.engine import device_forms

    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape).astype(np.float16 if half else np.float32)
    if zero_rows:
        values[..., 0, :] = 0  # an all-zero vector keeps scale 0 and codes 0
    codes, scales = device_forms.int8_per_vector(torch.from_numpy(values))
    flat = values.reshape(-1, shape[-1])
    want_codes, want_scales = int8_per_vector(flat)
    assert np.array_equal(codes.numpy().reshape(-1, shape[-1]), want_codes)
    assert np.array_equal(scales.numpy().reshape(-1), want_scales)
    blocked_codes, blocked_scales = device_forms.int8_per_vector(
        torch.from_numpy(values), block_bytes
    )
    assert blocked_codes.shape == codes.shape and blocked_scales.shape == scales.shape
    assert torch.equal(blocked_codes, codes) and torch.equal(blocked_scales, scales)
    for pack in (device_forms.sign_bits, device_forms.packed_by_sum):  # CPU, any device
        bits = pack(torch.from_numpy(values))
        assert np.array_equal(bits.numpy().reshape(len(flat), -1), sign_bits(flat))


def test_chunking_and_kept_fields_are_unchanged_by_compact_storage(tmp_path, tiny):
    """A chunked job with kept fields, stored compact: the same rows, chunks and kept
    columns as the exact job, its vectors the exact ones through the formulas."""
    import json

    from pipeline.local.process import process_file
    from pipeline.tasks import Reading, task_kind
    from schemas.job import Task

    source = tmp_path / "in.jsonl"
    source.write_text("".join(
        json.dumps({"id": f"d{i}", "text": f"words of document {i} " * (3 + 4 * i),
                    "title": f"t{i}"}) + "\n" for i in range(8)))  # fmt: skip
    exact = EncodeOptions(max_length=16, long_docs="chunk", chunk_overlap=2, dtype="float32")
    compact = EncodeOptions.model_validate(
        {**exact.model_dump(), "dense_storage": "int8", "colbert_storage": "binary"}
    )
    tables = {}
    for name, options in (("exact", exact), ("compact", compact)):
        process_file(task_kind(Task.EMBED), source, tmp_path / name, EmbedEngine(tiny, options),
                     reading=Reading(keep_fields=("title",)), shard_items=3)  # fmt: skip
        tables[name] = pq.read_table(sorted((tmp_path / name).glob("part-*.parquet")))
    want, got = tables["exact"], tables["compact"]
    assert max(got.column("chunk").to_pylist()) > 0
    for column in ("id", "chunk", "title", "n_tokens", "truncated", "sparse_indices"):
        assert got.column(column).to_pylist() == want.column(column).to_pylist(), column
    offsets, vectors = colbert_floats(want)
    got_offsets, got_vectors = colbert_floats(got)
    assert np.array_equal(offsets, got_offsets)
    np.testing.assert_array_equal(got_vectors, expected_floats(vectors, VectorForm.BINARY))
    np.testing.assert_array_equal(
        dense_floats(got), expected_floats(dense_floats(want), VectorForm.INT8)
    )


def test_int8_dense_is_a_fixed_size_binary_and_the_first_list_layout_still_reads():
    """Int8 dense vectors are stored as one fixed-size binary a vector (uncompressed); the
    fixed-size int8 lists of the first compact outputs read back the same."""
    from schemas.vector_layout import dense_field

    assert dense_field("int8", 8).type == pa.binary(8)
    codes = np.array([[1, -2, 3, -4], [127, 0, -127, 5]], np.int8)
    scales = np.array([0.5, 0.25], np.float32)
    want = codes.astype(np.float32) * scales[:, None]
    old = pa.table({
        "dense": pa.FixedSizeListArray.from_arrays(pa.array(codes.ravel()), 4),
        "dense_scale": pa.array(scales),
    })  # fmt: skip
    np.testing.assert_array_equal(dense_floats(old), want)
    field = dense_field("int8", 4)
    new = pa.table(
        {
            "dense": pa.FixedSizeBinaryArray.from_buffers(
                field.type, 2, [None, pa.py_buffer(codes.view(np.uint8))]
            ),
            "dense_scale": pa.array(scales),
        },
        schema=pa.schema([field, pa.field("dense_scale", pa.float32())]),
    )
    np.testing.assert_array_equal(dense_floats(new), want)
    # `--reuse` of a first compact output rewrites its rows in today's layout.
    from schemas.vector_layout import upgrade_vectors

    upgraded = upgrade_vectors(old, StorageDtype.FLOAT16)
    assert upgraded.schema.field("dense") == field
    assert upgraded.column("dense").to_pylist() == new.column("dense").to_pylist()
