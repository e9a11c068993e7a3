"""An m3pipe output streamed as batches of document vectors: part file after part file, a
few hundred rows at a time, so memory is bounded by the batch, never by the index.

A chunked output (`--long-docs chunk`) has several rows per document, one after another in
one part file; a batch never splits them, and a document scores its best chunk (the usual
max-passage rule), so every result is one document.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import OutputUnreadable
from pipeline.retrieval.scores import Vectors
from pipeline.storage.finished_output import FinishedOutput
from pipeline.storage.location import Location
from pipeline.storage.sink import part_name
from schemas.options import Mode
from schemas.vector_layout import colbert_floats, dense_floats

BATCH_ROWS = 256

_COLUMNS = {  # a scale column is there only when its vectors are stored as int8
    Mode.DENSE: ["dense", "dense_scale"],
    Mode.SPARSE: ["sparse_indices", "sparse_values"],
    Mode.COLBERT: ["colbert", "colbert_scales"],
}
_OPTIONAL = {"dense_scale", "colbert_scales"}


def document_batches(
    index: FinishedOutput, modes: tuple[Mode, ...], rows: int | None = None
) -> Iterator[tuple[Vectors, np.ndarray]]:
    """(vectors of a batch of rows, the first row of each document in it, then the row
    count)."""
    columns = ["id", *(name for mode in modes for name in _COLUMNS[mode])]
    for number in sorted(index.part_numbers()):
        path = index.location / part_name(number)
        try:
            yield from _part_batches(path, columns, rows or BATCH_ROWS)
        except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
            # An exact search that skipped a part would silently miss documents.
            raise OutputUnreadable(f"{path} is not a readable m3pipe part file: {exc}") from exc


def _part_batches(
    path: Location, columns: list[str], rows: int
) -> Iterator[tuple[Vectors, np.ndarray]]:
    parquet = pq.ParquetFile(path.path, filesystem=path.fs)
    present = set(parquet.schema_arrow.names)
    columns = [name for name in columns if name in present or name not in _OPTIONAL]
    carry: pa.RecordBatch | None = None
    for batch in parquet.iter_batches(batch_size=rows, columns=columns):
        if carry is not None:
            batch = pa.Table.from_batches([carry, batch]).combine_chunks().to_batches()[0]
        ids = batch.column("id").to_pylist()
        last_start = _last_document_start(ids)
        if last_start == 0:
            carry = batch  # one document so far: its chunks may go on
            continue
        yield batch_vectors(batch.slice(0, last_start), ids[:last_start])
        carry = batch.slice(last_start)
    if carry is not None and carry.num_rows:
        yield batch_vectors(carry, carry.column("id").to_pylist())


def _last_document_start(ids: list[str]) -> int:
    last = len(ids) - 1
    while last > 0 and ids[last - 1] == ids[-1]:
        last -= 1
    return last


def batch_vectors(batch: pa.RecordBatch, ids: list[str]) -> tuple[Vectors, np.ndarray]:
    """The vectors of rows in m3pipe's output columns, and where each document's rows start."""
    starts = [row for row in range(len(ids)) if row == 0 or ids[row] != ids[row - 1]]
    vectors = Vectors(ids=ids)
    names = batch.schema.names
    if "dense" in names:
        vectors.dense = dense_floats(batch)
    if "sparse_indices" in names:
        indices, values = batch.column("sparse_indices"), batch.column("sparse_values")
        vectors.sparse_offsets = _offsets(indices)
        vectors.sparse_indices = indices.flatten().to_numpy()
        vectors.sparse_values = _floats(values.flatten())
    if "colbert" in names:
        vectors.colbert_offsets, vectors.colbert = colbert_floats(batch)
    return vectors, np.array([*starts, len(ids)], dtype=np.int64)


def _offsets(array: pa.Array) -> np.ndarray:
    offsets = array.offsets.to_numpy()
    return (offsets - offsets[0]).astype(np.int64)


def _floats(array: pa.Array) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.float32)
