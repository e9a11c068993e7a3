"""Streaming JSONL reader (plain, .gz or .zst): one record per line, read as bytes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import UnreadableInput
from pipeline.storage.location import Location, open_location
from producers.inputs.compressed import STREAM_ERRORS, is_compressed, open_binary
from producers.inputs.lines import DEFAULT_MAX_RECORD_BYTES, oversize_reason, read_lines
from producers.inputs.validate import DocumentShape, InputItem, RecordShape
from schemas.document import Origin, Reject


def count_lines(path: Location | Path | str) -> int:
    """Fast line count of a plain file, for progress totals (0 for compressed input)."""
    location = open_location(path)
    if is_compressed(location):
        return 0
    count = 0
    with location.open_input() as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
    return count


def read_jsonl(
    path: Location | Path | str,
    *,
    id_field: str = "id",
    text_field: str = "text",
    keep_fields: tuple[str, ...] = (),
    shape: RecordShape | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[InputItem]:
    """Yield a validated record or a Reject per non-blank line; blank lines are not records.

    A line over `max_record_bytes` is rejected while it is read, never held whole.
    """
    shape = shape or DocumentShape(id_field, text_field, keep_fields)
    location = open_location(path)
    source = location.uri
    # Only a plain file can be read back from a byte offset: its documents know where they
    # are, and the producer may send their shards by reference.
    plain = not is_compressed(location)
    number = 0
    with open_binary(location) as handle:
        try:
            for line in read_lines(handle, max_record_bytes):
                number = line.number
                if line.data is None:
                    reason = oversize_reason(line.size, max_record_bytes)
                    yield InputItem(Reject(source=source, line=number, reason=reason), line=number)
                    continue
                if not line.data.strip():
                    continue
                origin = Origin(source, number, line.start, line.end) if plain else None
                record = jsonl_record(line.data, source, number, shape, origin)
                yield InputItem(record, line=number)
        except STREAM_ERRORS as exc:  # e.g. a truncated .gz or .zst
            raise UnreadableInput.partway(exc, line=number + 1) from exc


def jsonl_record(
    data: bytes, source: str, line: int, shape: RecordShape, origin: Origin | None = None
) -> Any:
    """What one non-blank JSONL line holds: the shape's record (a Document...) or a Reject."""
    record = _parse_line(data, source, line)
    if isinstance(record, Reject):
        return record
    return shape.convert(record, source=source, line=line, origin=origin)


def _parse_line(raw: bytes, source: str, line: int) -> Any:
    """The line's JSON value, or a Reject when it is not UTF-8 JSON."""
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reject(source=source, line=line, reason=f"invalid UTF-8 at byte {exc.start}")
    try:
        return json.loads(decoded)
    except json.JSONDecodeError as exc:
        return Reject(
            source=source, line=line, reason=f"malformed JSON: {exc.msg} at column {exc.colno}"
        )
    except RecursionError:
        return Reject(source=source, line=line, reason="malformed JSON: nested too deeply")
