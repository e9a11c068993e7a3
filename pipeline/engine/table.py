"""A shard's output columns, filled batch by batch, and the Arrow table they make.

Batches run longest-first; rows come out in input order. Every row's place is known once
the shard is tokenized (a row of n tokens has n - 1 ColBERT vectors), so each batch's
vectors are copied once, from the host copy of the device's output straight to their row's
place, while the device runs the next batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from pipeline.engine.compact_vectors import int8_per_vector, pool_tokens, sign_bits
from pipeline.engine.encoder import BatchOutput
from pipeline.engine.recycled import RecycledBuffers
from schemas.arrow_arrays import numeric_array, string_array
from schemas.document import Document
from schemas.options import EncodeOptions, Mode, StorageDtype
from schemas.vector_layout import (
    BINARY,
    INT8,
    STORED_NUMPY,
    colbert_array,
    stored_encoding,
    vector_bytes,
)

Empty = Callable[..., np.ndarray]
# Token pooling clusters a document's vectors a window at a time: Ward's clustering keeps
# n^2 / 2 distances (2 MB at 1,024 vectors, 268 MB at 8,192).
POOL_WINDOW = 1024


def _offsets(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


class _Vectors:
    """Vectors of one encoding (float16, float32, int8 with scales, binary) in a flat array,
    written by rows (`put`), from floats or already in their form."""

    def __init__(self, encoding: str, count: int, dim: int, empty: Empty = np.empty) -> None:
        self.encoding, self.dim = encoding, dim
        if encoding == BINARY:
            self.values = empty((count, vector_bytes(encoding, dim)), np.uint8)
        elif encoding == INT8:
            self.values = empty((count, dim), np.int8)
        else:
            self.values = empty((count, dim), STORED_NUMPY[StorageDtype(encoding)])
        self.scales = np.empty(count, np.float32) if encoding == INT8 else None

    def encoded(
        self, vectors: np.ndarray, scales: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(values, scales) of `vectors` in this encoding: floats are stored here; vectors
        already in it (made on the device: int8 codes with their `scales`, or packed sign
        bits) pass as they are."""
        if vectors.dtype in (np.int8, np.uint8):
            return vectors, scales
        if self.encoding == BINARY:
            return sign_bits(vectors), None
        if self.encoding == INT8:
            return int8_per_vector(vectors)
        return vectors, None

    def put(
        self, rows: slice | np.ndarray, vectors: np.ndarray, scales: np.ndarray | None = None
    ) -> None:
        """Store `vectors` (and an int8 form's `scales`) at `rows`."""
        values, scales = self.encoded(vectors, scales)
        self.values[rows] = values
        if self.scales is not None:
            assert scales is not None
            self.scales[rows] = scales


class ShardColumns:
    """The vector columns of one shard's rows (`lengths`: tokens of each row), stored as
    `options` says (compact forms: pipeline/engine/compact_vectors.py)."""

    def __init__(
        self,
        lengths: np.ndarray,
        options: EncodeOptions,
        dense_dim: int,
        colbert_dim: int,
        buffers: RecycledBuffers | None = None,
    ) -> None:
        self.modes, self.rows = options.modes, len(lengths)
        self.pool, self.sparse_top_k = options.colbert_pool, options.sparse_top_k
        self.dense = None
        if Mode.DENSE in self.modes:
            encoding = stored_encoding(options.dense_storage, options.dtype)
            self.dense = _Vectors(encoding, self.rows, dense_dim)
        self.colbert_offsets = _offsets(np.asarray(lengths, dtype=np.int64) - 1)
        self.colbert = None
        self._pooled: list[tuple[int, _Vectors]] = []  # (row, its pooled vectors)
        self._colbert_encoding = stored_encoding(options.colbert_storage, options.dtype)
        self._colbert_dim = colbert_dim
        if Mode.COLBERT in self.modes and self.pool == 1:
            # The large one: in memory used before, when there is some.
            count = int(self.colbert_offsets[-1])
            empty = buffers.empty if buffers is not None else np.empty
            self.colbert = _Vectors(self._colbert_encoding, count, colbert_dim, empty)
        # Sparse rows are small and their sizes known only from the device: kept per batch.
        self._sparse: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, out: BatchOutput) -> None:
        """Put one batch's outputs in their rows' places."""
        if self.dense is not None:
            assert out.dense is not None
            self.dense.put(out.rows, out.dense, out.dense_scales)
        if Mode.COLBERT in self.modes:
            assert out.colbert is not None
            for place, (row, length) in enumerate(zip(out.rows, out.lengths, strict=True)):
                vectors = out.colbert[place, : length - 1]
                if self.colbert is not None:
                    scales = None
                    if out.colbert_scales is not None:
                        scales = out.colbert_scales[place, : length - 1]
                    start = int(self.colbert_offsets[row])
                    self.colbert.put(slice(start, start + len(vectors)), vectors, scales)
                else:
                    pooled = pool_tokens(vectors, self.pool, window=POOL_WINDOW)
                    stored = _Vectors(self._colbert_encoding, len(pooled), self._colbert_dim)
                    stored.put(slice(None), pooled)
                    self._pooled.append((int(row), stored))
        if Mode.SPARSE in self.modes:
            assert out.sparse_counts is not None and out.sparse_indices is not None
            assert out.sparse_values is not None
            self._sparse.append(
                (out.rows, out.sparse_counts, out.sparse_indices, out.sparse_values)
            )

    def columns(self) -> dict[str, pa.Array]:
        columns: dict[str, pa.Array] = {}
        if self.dense is not None:
            values = self.dense.values
            if self.dense.encoding in (BINARY, INT8):  # a compact form: its bytes a vector
                values = values.view(np.uint8)
                columns["dense"] = pa.FixedSizeBinaryArray.from_buffers(
                    pa.binary(values.shape[1]), len(values), [None, pa.py_buffer(values)]
                )
            else:
                flat = numeric_array(values.reshape(-1))
                columns["dense"] = pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
            if self.dense.scales is not None:
                columns["dense_scale"] = numeric_array(self.dense.scales)
        if Mode.SPARSE in self.modes:
            offsets, indices, values = self._sparse_in_order()
            as_list = numeric_array(offsets.astype(np.int32))
            columns["sparse_indices"] = pa.ListArray.from_arrays(as_list, numeric_array(indices))
            columns["sparse_values"] = pa.ListArray.from_arrays(as_list, numeric_array(values))
        if Mode.COLBERT in self.modes:
            offsets, colbert = self._colbert_in_order()
            columns["colbert"] = colbert_array(offsets, colbert.values)
            if colbert.scales is not None:
                scales = numeric_array(colbert.scales)
                columns["colbert_scales"] = pa.ListArray.from_arrays(
                    numeric_array(offsets.astype(np.int32)), scales
                )
        return columns

    def _colbert_in_order(self) -> tuple[np.ndarray, _Vectors]:
        if self.colbert is not None:
            return self.colbert_offsets, self.colbert
        counts = np.zeros(self.rows, dtype=np.int64)
        for row, stored in self._pooled:
            counts[row] = len(stored.values)
        offsets = _offsets(counts)
        merged = _Vectors(self._colbert_encoding, int(offsets[-1]), self._colbert_dim)
        for row, stored in self._pooled:
            merged.values[offsets[row] : offsets[row + 1]] = stored.values
            if merged.scales is not None and stored.scales is not None:
                merged.scales[offsets[row] : offsets[row + 1]] = stored.scales
        return offsets, merged

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
        if self.sparse_top_k is not None:
            return top_k_terms(offsets, indices, values, self.sparse_top_k)
        return offsets, indices, values


def top_k_terms(
    offsets: np.ndarray, indices: np.ndarray, values: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's `k` heaviest terms (ties: the lower token id), in their order in the row."""
    counts = np.diff(offsets)
    if not len(counts) or counts.max(initial=0) <= k:
        return offsets, indices, values
    row_of = np.repeat(np.arange(len(counts)), counts)
    order = np.lexsort((indices, -values, row_of))  # by row, heaviest first
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - offsets[row_of[order]]
    keep = rank < k
    return _offsets(np.minimum(counts, k)), indices[keep], values[keep]


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
        "id": string_array([ids[i] for i in doc_index]),
        "chunk": numeric_array(np.asarray(chunk, np.int32)),  # no copy when int32 already
        "n_tokens": numeric_array(np.asarray(n_tokens, np.int32)),
        "truncated": numeric_array(np.asarray(truncated, bool)),
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
