"""Reading a byte stream line by line, each line bounded in memory.

A line longer than the limit is never held: it is skipped while it is read, and reported
with its size so the reader can reject it. This holds for plain and decompressed streams
alike (a 2 GB gzip member without a newline costs one read buffer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from schemas.document import DEFAULT_MAX_RECORD_BYTES

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, skipped at the start of a file
__all__ = ["DEFAULT_MAX_RECORD_BYTES", "Line", "read_lines"]
_SKIP_PIECE = 1 << 20


@dataclass(frozen=True)
class Line:
    number: int  # 1-based
    data: bytes | None  # without its line end; None when the line was over the limit
    size: int  # bytes of the line without its newline, counted even when it was skipped
    start: int = 0  # byte offset of the line in the stream (a skipped BOM counted)
    end: int = 0  # byte offset just past the line and its newline

    @property
    def oversize(self) -> bool:
        return self.data is None


def read_lines(
    handle: IO[bytes],
    max_bytes: int,
    on_skipped: Callable[[bytes], None] | None = None,
    *,
    strip_bom: bool = True,
) -> Iterator[Line]:
    """Every line of `handle`; a line over `max_bytes` comes with `data=None`.

    `on_skipped` sees each piece of a skipped line (a CSV reader follows quotes through it).
    A leading UTF-8 BOM is dropped, as pandas and DuckDB do (`strip_bom`: a stream that
    starts mid-file has none to drop).
    """
    number = 0
    offset = 0
    while piece := handle.readline(max_bytes + 1):
        number += 1
        start = offset
        if number == 1 and strip_bom and piece.startswith(BOM):
            start = len(BOM)
            piece = piece[len(BOM) :]
            if not piece.endswith(b"\n") and len(piece) == max_bytes + 1 - len(BOM):
                piece += handle.readline(len(BOM))  # still a line of at most max_bytes + 1
        if piece.endswith(b"\n"):
            offset = start + len(piece)
            yield Line(number, piece[:-1], len(piece) - 1, start, offset)
        elif len(piece) <= max_bytes:
            offset = start + len(piece)
            yield Line(number, piece, len(piece), start, offset)  # the last, without a newline
        else:
            size, newline = _skip_rest(handle, piece, on_skipped)
            offset = start + size + newline
            yield Line(number, None, size, start, offset)


def _skip_rest(
    handle: IO[bytes], piece: bytes, on_skipped: Callable[[bytes], None] | None
) -> tuple[int, int]:
    """Read to the end of the current line without keeping it: its size in bytes, and 1 if
    a newline ended it (0 at the end of the stream)."""
    size = 0
    while True:
        ended = piece.endswith(b"\n")
        if ended:
            piece = piece[:-1]
        size += len(piece)
        if on_skipped is not None:
            on_skipped(piece)
        if ended:
            return size, 1
        piece = handle.readline(_SKIP_PIECE)
        if not piece:
            return size, 0


def strip_line_end(data: bytes) -> bytes:
    return data[:-1] if data.endswith(b"\r") else data


def oversize_reason(size: int, limit: int) -> str:
    return f"record is larger than --max-record-bytes ({size:,} > {limit:,} bytes)"
