"""Streaming CSV reader (plain, .gz or .zst) with a header row naming the columns."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import UnreadableInput
from pipeline.storage import Location, open_location
from producers.compressed import STREAM_ERRORS, open_binary
from producers.validate import DocumentShape, InputItem, RecordShape
from schemas.document import Reject

# One CSV field may hold a whole long document (csv's default cap is 128 KiB).
csv.field_size_limit(2**31 - 1)


def _has_undecodable(values: list[str]) -> bool:
    # Bytes that are not UTF-8 arrive as lone surrogates (errors="surrogateescape").
    return any(any("\udc80" <= ch <= "\udcff" for ch in value) for value in values)


def read_csv(
    path: Location | Path | str,
    *,
    id_field: str = "id",
    text_field: str = "text",
    keep_fields: tuple[str, ...] = (),
    shape: RecordShape | None = None,
) -> Iterator[InputItem]:
    """Yield a validated record or a Reject per data row; the header names the columns."""
    shape = shape or DocumentShape(id_field, text_field, keep_fields)
    location = open_location(path)
    source = location.uri
    with open_binary(location) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        row_number = 0
        try:
            header = next(reader, None)
            if header is None:
                return
            shape.columns(header, source)
            for row_number, values in enumerate(_rows(reader, source), start=1):
                if isinstance(values, Reject):
                    yield InputItem(values.model_copy(update={"row": row_number}), row=row_number)
                elif not any(values):
                    continue  # a blank line is not a record
                elif _has_undecodable(values):
                    reason = "invalid UTF-8"
                    yield InputItem(
                        Reject(source=source, row=row_number, reason=reason), row=row_number
                    )
                elif len(values) != len(header):
                    reason = f"row has {len(values)} fields, header has {len(header)}"
                    yield InputItem(
                        Reject(source=source, row=row_number, reason=reason), row=row_number
                    )
                else:
                    record = dict(zip(header, values, strict=True))
                    result = shape.convert(record, source=source, row=row_number)
                    yield InputItem(result, row=row_number)
        except STREAM_ERRORS as exc:  # e.g. a truncated .gz or .zst
            raise UnreadableInput.partway(exc, row=row_number + 1) from exc


def _rows(reader: Iterator[list[str]], source: str) -> Iterator[list[str] | Reject]:
    """Rows, with a row the csv module cannot parse turned into a Reject."""
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Reject(source=source, reason=f"malformed CSV: {exc}")
            continue
        yield values
