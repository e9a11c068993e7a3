"""Parquet reader: the id and text columns (plus kept ones), a record batch at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UnreadableInput
from pipeline.storage import Location, open_location
from producers.compressed import check_readable_file
from producers.validate import DocumentShape, InputItem, RecordShape

BATCH_ROWS = 1024


def read_parquet(
    path: Location | Path | str,
    *,
    id_field: str = "id",
    text_field: str = "text",
    keep_fields: tuple[str, ...] = (),
    shape: RecordShape | None = None,
) -> Iterator[InputItem]:
    """Yield a validated record or a Reject per row. Integer ids are read as decimal strings."""
    shape = shape or DocumentShape(id_field, text_field, keep_fields)
    location = open_location(path)
    check_readable_file(location)
    try:
        handle = location.open_random_access()
    except OSError as exc:
        raise UnreadableInput(f"cannot open file: {exc.strerror or exc}") from exc
    with handle:
        yield from _read_rows(handle, location.uri, shape)


def _read_rows(handle: pa.NativeFile, source: str, shape: RecordShape) -> Iterator[InputItem]:
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
            for record in batch.to_pylist():
                row += 1
                yield InputItem(shape.convert(record, source=source, row=row), row=row)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UnreadableInput.partway(exc, row=row + 1) from exc
