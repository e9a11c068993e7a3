"""Parquet reader: the id and text columns (plus kept ones), a record batch at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import UnreadableInput
from pipeline.inputs.readers.compressed import check_readable_file
from pipeline.inputs.readers.lines import DEFAULT_MAX_RECORD_BYTES, oversize_reason
from pipeline.inputs.validate import DocumentShape, InputItem, RecordShape
from pipeline.storage.location import Location, open_location
from schemas.document import Reject

BATCH_ROWS = 1024


def read_parquet(
    path: Location | Path | str,
    *,
    id_field: str = "id",
    text_field: str = "text",
    keep_fields: tuple[str, ...] = (),
    shape: RecordShape | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[InputItem]:
    """Yield a validated record or a Reject per row. Integer ids are read as decimal strings.

    String and binary columns are decoded as UTF-8 here, so a row that is not valid UTF-8
    is one reject. A row whose text columns hold more than `max_record_bytes` is rejected
    before it becomes Python objects (Parquet reads it with its batch: the limit bounds
    the copy, not the page).
    """
    shape = shape or DocumentShape(id_field, text_field, keep_fields)
    location = open_location(path)
    check_readable_file(location)
    try:
        handle = location.open_random_access()
    except OSError as exc:
        raise UnreadableInput(f"cannot open file: {exc.strerror or exc}") from exc
    with handle:
        yield from _read_rows(handle, location.uri, shape, max_record_bytes)


def _read_rows(
    handle: pa.NativeFile, source: str, shape: RecordShape, limit: int
) -> Iterator[InputItem]:
    try:
        parquet = pq.ParquetFile(handle)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UnreadableInput(f"not a readable Parquet file: {exc}") from exc
    schema = parquet.schema_arrow
    columns = shape.columns(schema.names, source)
    integer_ids = [
        name
        for name in shape.id_columns()
        if name in columns and pa.types.is_integer(schema.field(name).type)
    ]
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            for name in integer_ids:
                index = batch.schema.get_field_index(name)
                batch = batch.set_column(index, name, batch.column(index).cast(pa.string()))
            batch, texts = _texts_as_binary(batch)
            sizes = _text_bytes(batch, texts)
            fits = sizes <= limit
            kept = iter(batch.filter(pa.array(fits)).to_pylist())
            for index, (size, fit) in enumerate(zip(sizes.tolist(), fits.tolist(), strict=True)):
                row += 1
                if not fit:
                    doc_id = _small_id(batch, shape.id_columns()[-1], index)
                    reason = oversize_reason(size, limit)
                    yield InputItem(
                        Reject(source=source, row=row, id=doc_id, reason=reason), row=row
                    )
                    continue
                record = _decoded(next(kept), texts)
                if isinstance(record, str):
                    yield InputItem(Reject(source=source, row=row, reason=record), row=row)
                    continue
                yield InputItem(shape.convert(record, source=source, row=row), row=row)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UnreadableInput.partway(exc, row=row + 1) from exc


def _texts_as_binary(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[str]]:
    """String and binary columns as binary (a free cast): decoded row by row, so that one
    row of invalid UTF-8 is one reject, not a failed batch."""
    texts = []
    for index, field in enumerate(batch.schema):
        if pa.types.is_string(field.type) or pa.types.is_binary(field.type):
            target = pa.binary()
        elif pa.types.is_large_string(field.type) or pa.types.is_large_binary(field.type):
            target = pa.large_binary()
        else:
            continue
        texts.append(field.name)
        batch = batch.set_column(index, field.name, batch.column(index).cast(target))
    return batch, texts


def _text_bytes(batch: pa.RecordBatch, texts: list[str]) -> np.ndarray:
    """Bytes of text per row: its string and binary columns together."""
    total = np.zeros(batch.num_rows, dtype=np.int64)
    for name in texts:
        lengths = pc.fill_null(pc.binary_length(batch.column(name)), 0)
        total += lengths.to_numpy(zero_copy_only=False).astype(np.int64)
    return total


def _small_id(batch: pa.RecordBatch, column: str, index: int) -> str | None:
    """The row's id for its reject, when it is a short, valid string."""
    if column not in batch.schema.names:
        return None
    value = batch.column(column)[index].as_py()
    if isinstance(value, bytes) and len(value) <= 1024:
        return value.decode("utf-8", "replace")
    return None


def _decoded(record: dict[str, object], texts: list[str]) -> dict[str, object] | str:
    """The record with its text columns decoded, or why one is not UTF-8."""
    for name in texts:
        value = record.get(name)
        if isinstance(value, bytes):
            try:
                record[name] = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"column {name!r} is not valid UTF-8 (at byte {exc.start})"
    return record
