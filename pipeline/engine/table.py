"""A shard's output columns, filled batch by batch, and the Arrow table they make.

Batches run longest-first; rows come out in input order. Every row's place is known once
the shard is tokenized (a row of n tokens has n - 1 ColBERT vectors), so each batch's
vectors are copied once, from the host copy of the device's output straight to their row's
place, while the device runs the next batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.engine.encoder import BatchOutput
from pipeline.engine.recycled import RecycledBuffers
from schemas.document import Document
from schemas.options import Mode, StorageDtype
from schemas.vector_layout import STORED_NUMPY, colbert_array


def _offsets(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


class ShardColumns:
    """The vector columns of one shard's rows (`lengths`: tokens of each row)."""

    def __init__(
        self,
        lengths: np.ndarray,
        modes: tuple[Mode, ...],
        dtype: StorageDtype,
        dense_dim: int,
        colbert_dim: int,
        buffers: RecycledBuffers | None = None,
    ) -> None:
        self.modes, self.rows = modes, len(lengths)
        stored = STORED_NUMPY[dtype]
        self.dense = np.empty((self.rows, dense_dim), stored) if Mode.DENSE in modes else None
        self.colbert_offsets = _offsets(np.asarray(lengths, dtype=np.int64) - 1)
        self.colbert = None
        if Mode.COLBERT in modes:  # the large one: in memory used before, when there is some
            shape = (int(self.colbert_offsets[-1]), colbert_dim)
            empty = buffers.empty if buffers is not None else np.empty
            self.colbert = empty(shape, stored)
        # Sparse rows are small and their sizes known only from the device: kept per batch.
        self._sparse: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, out: BatchOutput) -> None:
        """Put one batch's outputs in their rows' places."""
        if self.dense is not None:
            assert out.dense is not None
            self.dense[out.rows] = out.dense
        if self.colbert is not None:
            assert out.colbert is not None
            starts = self.colbert_offsets[out.rows]
            for place, (start, length) in enumerate(zip(starts, out.lengths, strict=True)):
                self.colbert[start : start + length - 1] = out.colbert[place, : length - 1]
        if Mode.SPARSE in self.modes:
            assert out.sparse_counts is not None and out.sparse_indices is not None
            assert out.sparse_values is not None
            self._sparse.append(
                (out.rows, out.sparse_counts, out.sparse_indices, out.sparse_values)
            )

    def columns(self) -> dict[str, pa.Array]:
        columns: dict[str, pa.Array] = {}
        if self.dense is not None:
            values = pa.array(self.dense.reshape(-1))
            columns["dense"] = pa.FixedSizeListArray.from_arrays(values, self.dense.shape[1])
        if Mode.SPARSE in self.modes:
            offsets, indices, values = self._sparse_in_order()
            as_list = pa.array(offsets.astype(np.int32))
            columns["sparse_indices"] = pa.ListArray.from_arrays(as_list, pa.array(indices))
            columns["sparse_values"] = pa.ListArray.from_arrays(as_list, pa.array(values))
        if self.colbert is not None:
            columns["colbert"] = colbert_array(self.colbert_offsets, self.colbert)
        return columns

    def _sparse_in_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row's terms, rows back in input order; every term copied once."""
        counts = np.zeros(self.rows, dtype=np.int64)
        for rows, part_counts, _, _ in self._sparse:
            counts[rows] = part_counts
        offsets = _offsets(counts)
        indices = np.empty(int(offsets[-1]), dtype=np.int32)
        values = np.empty(int(offsets[-1]), dtype=np.float32)
        for rows, part_counts, part_indices, part_values in self._sparse:
            # Destination of each term: its row's start plus its place within the row.
            starts = np.repeat(offsets[rows], part_counts)
            within = np.arange(len(part_indices)) - np.repeat(
                _offsets(part_counts)[:-1], part_counts
            )
            indices[starts + within] = part_indices
            values[starts + within] = part_values
        return offsets, indices, values


def assemble_table(
    columns: ShardColumns,
    schema: pa.Schema,
    ids: Sequence[str],
    doc_index: np.ndarray,
    chunk: np.ndarray,
    n_tokens: np.ndarray,
    truncated: np.ndarray,
) -> pa.Table:
    """The shard's rows in input order, in the output contract's schema."""
    arrays: dict[str, pa.Array] = {
        "id": pa.array([ids[i] for i in doc_index], type=pa.string()),
        "chunk": pa.array(chunk, type=pa.int32()),
        "n_tokens": pa.array(n_tokens.astype(np.int32), type=pa.int32()),
        "truncated": pa.array(truncated, type=pa.bool_()),
        **columns.columns(),
    }
    return pa.Table.from_arrays([arrays[field.name] for field in schema], schema=schema)


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
