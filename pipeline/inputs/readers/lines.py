"""Reading a byte stream line by line, each line bounded in memory.

A line longer than the limit is never held: it is skipped while it is read, and reported
with its size so the reader can reject it. This holds for plain and decompressed streams
alike (a 2 GB gzip member without a newline costs one read buffer).

The stream is read in blocks and split with one `bytes.split` per block
(`read_line_blocks`): a Python step per line costs more than the reading itself at
millions of short records. `read_lines` gives the same lines one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO, NamedTuple

from schemas.document import DEFAULT_MAX_RECORD_BYTES

BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, skipped at the start of a file
__all__ = ["DEFAULT_MAX_RECORD_BYTES", "Line", "LineBlock", "read_line_blocks", "read_lines"]
BLOCK_BYTES = 1 << 20  # bytes read at a time from a plain file
# From a decompressing stream: small reads, so that the records before damage in a
# truncated stream are delivered (what is lost is at most one read and one compressed block).
COMPRESSED_BLOCK_BYTES = 16 * 1024


class Line(NamedTuple):
    number: int  # 1-based
    data: bytes | None  # without its line end; None when the line was over the limit
    size: int  # bytes of the line without its newline, counted even when it was skipped
    start: int = 0  # byte offset of the line in the stream (a skipped BOM counted)
    end: int = 0  # byte offset just past the line and its newline

    @property
    def oversize(self) -> bool:
        return self.data is None


class LineBlock(NamedTuple):
    """Consecutive lines, each within the limit: `lines[i]` is line `number + i`, without
    its newline; the first starts at byte `start`, each is followed by one newline byte
    except the last when `last_newline` is False (the stream ended without one)."""

    number: int
    start: int
    lines: list[bytes]
    last_newline: bool = True

    @property
    def last_number(self) -> int:
        return self.number + len(self.lines) - 1

    def each(self) -> Iterator[Line]:
        offset = self.start
        last = len(self.lines) - 1
        for index, data in enumerate(self.lines):
            start = offset
            offset += len(data) + (1 if index < last or self.last_newline else 0)
            yield Line(self.number + index, data, len(data), start, offset)


def read_line_blocks(
    handle: IO[bytes],
    max_bytes: int,
    on_skipped: Callable[[bytes], None] | None = None,
    *,
    strip_bom: bool = True,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[LineBlock | Line]:
    """Every line of `handle`, in blocks of lines within `max_bytes`; a line over it comes
    alone, as a Line with `data=None`, and was never held whole (at most `max_bytes` plus
    one read of it).

    `on_skipped` sees each piece of a skipped line (a CSV reader follows quotes through it).
    A leading UTF-8 BOM is dropped, as pandas and DuckDB do (`strip_bom`: a stream that
    starts mid-file has none to drop).
    """
    number = 1  # of the next line
    offset = 0  # where the next line starts
    pending: list[bytes] = []  # the start of a line whose end is not read yet
    pending_size = 0  # its bytes (at most max_bytes)
    leftover = b""  # read, not yet looked at (what followed a skipped line)
    if strip_bom:
        head = handle.read(len(BOM))
        while 0 < len(head) < len(BOM) and (more := handle.read(len(BOM) - len(head))):
            head += more
        if head == BOM:
            offset = len(BOM)
        else:
            leftover = head
    # read1: what one read of the underlying stream gives, so that a decompressing stream
    # hands over what it has before it meets damage.
    read = getattr(handle, "read1", handle.read)
    while True:
        piece = leftover or read(block_bytes)
        leftover = b""
        if not piece:
            if pending or (number == 1 and offset == len(BOM)):  # a BOM alone: one blank line
                yield LineBlock(number, offset, [b"".join(pending)], last_newline=False)
            return
        cut = piece.rfind(b"\n")
        if cut < 0:
            pending.append(piece)
            pending_size += len(piece)
        else:
            # The pending start is joined once, when its line ends.
            data = b"".join((*pending, piece)) if pending else piece
            cut += pending_size
            rest = data[cut + 1 :]
            pending, pending_size = ([rest], len(rest)) if rest else ([], 0)
            lines = data[:cut].split(b"\n")
            yield from _within_limit(LineBlock(number, offset, lines), max_bytes, on_skipped)
            number += len(lines)
            offset += cut + 1
        if pending_size > max_bytes:
            if on_skipped is not None:
                for part in pending:
                    on_skipped(part)
            size, newline, leftover = _skip_rest(read, pending_size, on_skipped, block_bytes)
            yield Line(number, None, size, offset, offset + size + newline)
            number += 1
            offset += size + newline
            pending, pending_size = [], 0


def _within_limit(
    block: LineBlock, max_bytes: int, on_skipped: Callable[[bytes], None] | None
) -> Iterator[LineBlock | Line]:
    """`block` as it is, or cut around its lines over the limit (when a read is larger
    than the limit, whole long lines arrive in one read)."""
    if max(map(len, block.lines)) <= max_bytes:
        yield block
        return
    kept: list[bytes] = []
    start = offset = block.start
    for index, data in enumerate(block.lines):
        if len(data) > max_bytes:
            if kept:
                yield LineBlock(block.number + index - len(kept), start, kept)
                kept = []
            if on_skipped is not None:
                on_skipped(data)
            yield Line(block.number + index, None, len(data), offset, offset + len(data) + 1)
            offset += len(data) + 1
            start = offset
            continue
        kept.append(data)
        offset += len(data) + 1
    if kept:
        yield LineBlock(block.number + len(block.lines) - len(kept), start, kept)


def _skip_rest(
    read: Callable[[int], bytes],
    size: int,
    on_skipped: Callable[[bytes], None] | None,
    block_bytes: int,
) -> tuple[int, int, bytes]:
    """Read to the end of the current line, of which `size` bytes are read already,
    without keeping it: its size in bytes, 1 if a newline ended it (0 at the end of the
    stream), and what was read past that newline."""
    while piece := read(block_bytes):
        cut = piece.find(b"\n")
        if cut >= 0:
            rest, piece = piece[cut + 1 :], piece[:cut]
        size += len(piece)
        if on_skipped is not None and piece:
            on_skipped(piece)
        if cut >= 0:
            return size, 1, rest
    return size, 0, b""


def read_lines(
    handle: IO[bytes],
    max_bytes: int,
    on_skipped: Callable[[bytes], None] | None = None,
    *,
    strip_bom: bool = True,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[Line]:
    """Every line of `handle` (read_line_blocks, one Line at a time); a line over
    `max_bytes` comes with `data=None`."""
    for block in read_line_blocks(
        handle, max_bytes, on_skipped, strip_bom=strip_bom, block_bytes=block_bytes
    ):
        if isinstance(block, Line):
            yield block
        else:
            yield from block.each()


def strip_line_end(data: bytes) -> bytes:
    return data[:-1] if data.endswith(b"\r") else data


def oversize_reason(size: int, limit: int) -> str:
    return f"record is larger than --max-record-bytes ({size:,} > {limit:,} bytes)"
