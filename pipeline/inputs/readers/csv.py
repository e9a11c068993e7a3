"""Streaming CSV reader (plain, .gz or .zst) with a header row naming the columns."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import UnreadableInput
from pipeline.inputs.readers.compressed import STREAM_ERRORS, open_binary
from pipeline.inputs.readers.csv_records import CsvRecord, read_csv_records
from pipeline.inputs.readers.lines import DEFAULT_MAX_RECORD_BYTES, oversize_reason
from pipeline.inputs.validate import DocumentShape, InputItem, RecordShape
from pipeline.storage.location import Location, open_location
from schemas.document import Reject

# Records are bounded by --max-record-bytes before the csv module sees them.
csv.field_size_limit(2**31 - 1)


def read_csv(
    path: Location | Path | str,
    *,
    id_field: str = "id",
    text_field: str = "text",
    keep_fields: tuple[str, ...] = (),
    shape: RecordShape | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[InputItem]:
    """Yield a validated record or a Reject per data row; the header names the columns.

    Rows are numbered from 1 after the header; blank rows are numbered but not records.
    """
    shape = shape or DocumentShape(id_field, text_field, keep_fields)
    location = open_location(path)
    source = location.uri
    row_number = 0
    with open_binary(location) as raw:
        records = read_csv_records(raw, max_record_bytes)
        try:
            header = _header(next(records, None), max_record_bytes)
            if header is None:
                return
            shape.columns(header, source)
            for row_number, record in enumerate(records, start=1):
                if record.data is not None and not record.data.strip():
                    continue  # a blank line is not a record (",," is one, with empty fields)
                values = _values(record, max_record_bytes, f"row {row_number}")
                if isinstance(values, str):
                    reject = Reject(source=source, row=row_number, reason=values)
                    yield InputItem(reject, row=row_number)
                elif len(values) != len(header):
                    reason = f"row has {len(values)} fields, header has {len(header)}"
                    reject = Reject(source=source, row=row_number, reason=reason)
                    yield InputItem(reject, row=row_number)
                else:
                    result = shape.convert(
                        dict(zip(header, values, strict=True)), source=source, row=row_number
                    )
                    yield InputItem(result, row=row_number)
        except STREAM_ERRORS as exc:  # e.g. a truncated .gz or .zst
            raise UnreadableInput.partway(exc, row=row_number + 1) from exc


def _header(record: CsvRecord | None, limit: int) -> list[str] | None:
    if record is None:
        return None
    values = _values(record, limit, "the header")
    if isinstance(values, str):
        raise UnreadableInput(f"cannot read the CSV header: {values}", row=0)
    return values


def _values(record: CsvRecord, limit: int, where: str) -> list[str] | str:
    """The record's fields, or the reason it is rejected."""
    if record.unterminated:
        return f"unterminated quoted field from {where} (line {record.line}) to the end of the file"
    if record.data is None:
        return oversize_reason(record.size, limit)
    try:
        text = record.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start} of the record"
    try:
        return next(csv.reader([text]), [])
    except csv.Error as exc:
        return f"malformed CSV: {exc}"
