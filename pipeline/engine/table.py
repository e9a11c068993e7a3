"""Assemble batch outputs into one Arrow table in the output contract's schema and order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.engine.encoder import BatchOutput
from schemas.document import Document
from schemas.options import Mode


def _offsets(counts: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.array(offsets, type=pa.int32())


def _vectors(flat: np.ndarray, dim: int) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim)


def batch_columns(out: BatchOutput, modes: tuple[Mode, ...]) -> dict[str, pa.Array]:
    """The vector columns of one batch, without Python work per token."""
    columns: dict[str, pa.Array] = {}
    if Mode.DENSE in modes:
        assert out.dense is not None
        columns["dense"] = _vectors(out.dense, out.dense.shape[1])
    if Mode.SPARSE in modes:
        assert out.sparse_counts is not None
        offsets = _offsets(out.sparse_counts)
        columns["sparse_indices"] = pa.ListArray.from_arrays(offsets, pa.array(out.sparse_indices))
        columns["sparse_values"] = pa.ListArray.from_arrays(offsets, pa.array(out.sparse_values))
    if Mode.COLBERT in modes:
        assert out.colbert is not None and out.colbert_counts is not None
        vectors = _vectors(out.colbert, out.colbert.shape[1])
        columns["colbert"] = pa.ListArray.from_arrays(_offsets(out.colbert_counts), vectors)
    return columns


def assemble_table(
    outputs: Sequence[BatchOutput],
    schema: pa.Schema,
    ids: Sequence[str],
    doc_index: np.ndarray,
    chunk: np.ndarray,
    n_tokens: np.ndarray,
    truncated: np.ndarray,
    modes: tuple[Mode, ...],
) -> pa.Table:
    """Rows back in input order: batches ran longest-first, the table comes out as read."""
    rows = np.concatenate([o.rows for o in outputs]) if outputs else np.zeros(0, np.int64)
    vector_parts = [pa.record_batch(batch_columns(o, modes)) for o in outputs]
    restore = np.argsort(rows, kind="stable")
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "id": pa.array([ids[i] for i in doc_index], type=pa.string()),
        "chunk": pa.array(chunk, type=pa.int32()),
        "n_tokens": pa.array(n_tokens.astype(np.int32), type=pa.int32()),
        "truncated": pa.array(truncated, type=pa.bool_()),
    }
    if vector_parts:
        vectors = pa.Table.from_batches(vector_parts).take(pa.array(restore))
        for name in vectors.column_names:
            columns[name] = vectors.column(name)
    arrays = [columns[field.name] for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def with_fields(table: pa.Table, docs: Sequence[Document], keep_fields: Sequence[str]) -> pa.Table:
    """`table` plus one string column per kept input field, repeated on every chunk row."""
    if not keep_fields:
        return table
    by_id = {doc.id: doc.fields or {} for doc in docs}
    row_fields = [by_id[doc_id] for doc_id in table.column("id").to_pylist()]
    for name in keep_fields:
        values = pa.array([fields.get(name) for fields in row_fields], type=pa.string())
        table = table.append_column(pa.field(name, pa.string()), values)
    return table
