"""Cutting a CSV byte stream into records, bounded, before the csv module parses each one.

The csv module alone reads an unterminated quote as one field running to the end of the
file, silently, and holds any record whole however large. Here the record boundaries are
found first, by following the quotes line by line as the csv module's default dialect
(excel, non-strict) does, so that an unterminated quote and an oversized record become one
reject each, with their position, while memory stays within the record limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import IO

from pipeline.inputs.readers.lines import read_lines, strip_line_end

_QUOTE, _COMMA = ord('"'), ord(",")


class _State(Enum):
    FIELD_START = 0
    UNQUOTED = 1  # in a field that did not start with a quote: quotes are literal
    QUOTED = 2  # in a quoted field: newlines and commas belong to it
    QUOTE_IN_QUOTED = 3  # a quote inside a quoted field: an escape ("") or its end


class QuoteTracker:
    """Where a record's bytes leave the parser: in a quoted field or not."""

    def __init__(self) -> None:
        self.state = _State.FIELD_START

    def feed(self, data: bytes) -> None:
        """Follow `data`, a line or a piece of one (no newline in it)."""
        state = self.state
        if state is _State.FIELD_START and b'"' not in data:  # the common case: no quotes
            self.state = _State.FIELD_START if not data or data.endswith(b",") else _State.UNQUOTED
            return
        i, n = 0, len(data)
        while i < n:
            if state is _State.QUOTED:
                j = data.find(b'"', i)
                if j < 0:
                    break
                state, i = _State.QUOTE_IN_QUOTED, j + 1
            elif state is _State.UNQUOTED:
                j = data.find(b",", i)
                if j < 0:
                    break
                state, i = _State.FIELD_START, j + 1
            else:  # FIELD_START or QUOTE_IN_QUOTED: one byte decides
                byte = data[i]
                if byte == _QUOTE:
                    state = _State.QUOTED
                elif byte == _COMMA:
                    state = _State.FIELD_START
                else:
                    state = _State.UNQUOTED
                i += 1
        self.state = state

    def line_end(self) -> bool:
        """At a newline: True when it ends the record (it is not inside a quoted field)."""
        if self.state is _State.QUOTED:
            return False
        self.state = _State.FIELD_START
        return True


@dataclass(frozen=True)
class CsvRecord:
    line: int  # the 1-based line the record starts on
    data: bytes | None  # the record's bytes; None when it is over the limit or unterminated
    size: int  # bytes read for it, line ends included
    unterminated: bool = False  # a quoted field ran to the end of the file


def read_csv_records(handle: IO[bytes], max_bytes: int) -> Iterator[CsvRecord]:
    """Every record of the stream, each at most `max_bytes` held (see the module doc)."""
    tracker = QuoteTracker()
    parts: list[bytes] = []
    size = 0
    start: int | None = None
    kept = True
    for line in read_lines(handle, max_bytes, on_skipped=tracker.feed):
        if start is None:
            start, size, kept = line.number, 0, True
        size += line.size + 1
        if line.data is None:
            kept = False
        else:
            tracker.feed(line.data)
            kept = kept and size <= max_bytes + 1
        if kept and line.data is not None:
            parts.append(line.data)
        else:
            parts.clear()
        if tracker.line_end():
            data = strip_line_end(b"\n".join(parts)) if kept else None
            yield CsvRecord(start, data, size - 1)
            parts, start = [], None
    if start is not None:
        yield CsvRecord(start, None, size - 1, unterminated=True)
