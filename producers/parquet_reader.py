"""Parquet reader: the id and text columns (plus kept ones), a record batch at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError, UnreadableInput
from pipeline.storage import Location, open_location
from producers.compressed import check_readable_file
from producers.validate import InputItem, record_to_document

BATCH_ROWS = 1024


def read_parquet(
    path: Location | Path | str,
    *,
    id_field: str = "id",
    text_field: str = "text",
    keep_fields: tuple[str, ...] = (),
) -> Iterator[InputItem]:
    """Yield a Document or a Reject per row. Integer ids are read as their decimal strings."""
    location = open_location(path)
    check_readable_file(location)
    try:
        handle = location.open_random_access()
    except OSError as exc:
        raise UnreadableInput(f"cannot open file: {exc.strerror or exc}") from exc
    with handle:
        yield from _read_rows(handle, location.uri, id_field, text_field, keep_fields)


def _read_rows(
    handle: pa.NativeFile,
    source: str,
    id_field: str,
    text_field: str,
    keep_fields: tuple[str, ...],
) -> Iterator[InputItem]:
    try:
        parquet = pq.ParquetFile(handle)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UnreadableInput(f"not a readable Parquet file: {exc}") from exc
    names = parquet.schema_arrow.names
    columns = list(dict.fromkeys((id_field, text_field, *keep_fields)))
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(
            f"{source}: no column {missing[0]!r} (columns: {names[:20]}); "
            "use --id-field/--text-field/--keep-fields"
        )
    id_type = parquet.schema_arrow.field(id_field).type
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            if pa.types.is_integer(id_type):
                index = batch.schema.get_field_index(id_field)
                batch = batch.set_column(index, id_field, batch.column(index).cast(pa.string()))
            for record in batch.to_pylist():
                row += 1
                result = record_to_document(
                    record,
                    source=source,
                    row=row,
                    id_field=id_field,
                    text_field=text_field,
                    keep_fields=keep_fields,
                )
                yield InputItem(result, row=row)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UnreadableInput.partway(exc, row=row + 1) from exc
