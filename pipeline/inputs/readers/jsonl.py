"""Streaming JSONL reader (plain, .gz or .zst): one record per line, read as bytes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import UnreadableInput
from pipeline.inputs.readers.compressed import STREAM_ERRORS, is_compressed, open_binary
from pipeline.inputs.readers.lines import (
    BLOCK_BYTES,
    COMPRESSED_BLOCK_BYTES,
    DEFAULT_MAX_RECORD_BYTES,
    Line,
    LineBlock,
    oversize_reason,
    read_line_blocks,
)
from pipeline.inputs.validate import DocumentShape, InputItem, RecordShape
from pipeline.storage.location import Location, open_location
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
    for block in jsonl_blocks(location, max_record_bytes):
        if isinstance(block, Line):  # over the limit, skipped
            reason = oversize_reason(block.size, max_record_bytes)
            yield InputItem(Reject(source=source, line=block.number, reason=reason), block.number)
        else:
            yield from _block_items(block, source, shape, plain)


def jsonl_blocks(location: Location, max_record_bytes: int) -> Iterator[LineBlock | Line]:
    """The input's lines, in blocks; a line over `max_record_bytes` alone, not held.
    UnreadableInput (naming the first line not read) when the stream fails partway."""
    block_bytes = COMPRESSED_BLOCK_BYTES if is_compressed(location) else BLOCK_BYTES
    number = 0  # the last line delivered
    with open_binary(location) as handle:
        try:
            for block in read_line_blocks(handle, max_record_bytes, block_bytes=block_bytes):
                yield block
                number = block.number if isinstance(block, Line) else block.last_number
        except STREAM_ERRORS as exc:  # e.g. a truncated .gz or .zst
            raise UnreadableInput.partway(exc, line=number + 1) from exc


def _block_items(
    block: LineBlock, source: str, shape: RecordShape, plain: bool
) -> Iterator[InputItem]:
    """The items of a block's non-blank lines."""
    offset = block.start
    last = block.number + len(block.lines) - 1
    for number, data in enumerate(block.lines, block.number):
        start = offset
        offset += len(data) + (1 if number < last or block.last_newline else 0)
        if not data.strip():
            continue
        origin = Origin(source, number, start, offset) if plain else None
        yield InputItem(line_record(data, source, number, shape, origin), line=number)


def line_record(
    data: bytes, source: str, line: int, shape: RecordShape, origin: Origin | None = None
) -> Any:
    """`jsonl_record`, with a fast path for the common line: UTF-8 JSON of a plainly valid
    document. Anything else takes `jsonl_record`, which gives the reason it is rejected."""
    value = fast_json(data)
    if value is NOT_PARSED:
        return jsonl_record(data, source, line, shape, origin)
    record = shape.quick(value, origin) if isinstance(shape, DocumentShape) else None
    if record is None:
        record = shape.convert(value, source=source, line=line, origin=origin)
    return record


NOT_PARSED = object()
# json.loads without its per-call Python wrapper (typeshed does not declare the attribute).
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def fast_json(data: bytes) -> Any:
    """What `json.loads(data.decode("utf-8"))` returns, or NOT_PARSED if that would raise
    (then `jsonl_record` says why)."""
    try:
        text = data.decode("utf-8").strip(" \t\n\r")  # JSON's whitespace, as json.loads
        value, end = _scan(text, 0)
    except (UnicodeDecodeError, StopIteration, ValueError, RecursionError):
        return NOT_PARSED
    return value if end == len(text) else NOT_PARSED


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
