"""The block line reader against the line-at-a-time reader it replaced (kept here as the
oracle): the same lines, numbers, offsets and skipped sizes for any bytes, any limit and
any read size."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.inputs.readers.lines import BOM, Line, read_lines


def oracle_lines(
    handle: io.BytesIO,
    max_bytes: int,
    on_skipped: Callable[[bytes], None] | None = None,
    *,
    strip_bom: bool = True,
) -> Iterator[Line]:
    """The reader before blocks: one `readline(max_bytes + 1)` per line."""
    number = 0
    offset = 0
    while piece := handle.readline(max_bytes + 1):
        number += 1
        start = offset
        if number == 1 and strip_bom and piece.startswith(BOM):
            start = len(BOM)
            piece = piece[len(BOM) :]
            if not piece.endswith(b"\n") and len(piece) == max_bytes + 1 - len(BOM):
                piece += handle.readline(len(BOM))
        if piece.endswith(b"\n"):
            offset = start + len(piece)
            yield Line(number, piece[:-1], len(piece) - 1, start, offset)
        elif len(piece) <= max_bytes:
            offset = start + len(piece)
            yield Line(number, piece, len(piece), start, offset)
        else:
            size = 0
            while True:
                ended = piece.endswith(b"\n")
                if ended:
                    piece = piece[:-1]
                size += len(piece)
                if on_skipped is not None:
                    on_skipped(piece)
                if ended:
                    break
                piece = handle.readline(1 << 20)
                if not piece:
                    break
            offset = start + size + (1 if ended else 0)
            yield Line(number, None, size, start, offset)


# Lines of every size around the limit, blank lines, CRs, BOMs in and out of place.
chunks = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"\n", b"\r\n", b"\n\n", BOM, b"x" * 64, b"y" * 300]),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(
    data=chunks,
    # From 3: the oracle saw a BOM only when one readline could return it whole.
    max_bytes=st.integers(min_value=3, max_value=120),
    block_bytes=st.integers(min_value=1, max_value=200),
    strip_bom=st.booleans(),
)
def test_same_lines_as_the_line_at_a_time_reader(data, max_bytes, block_bytes, strip_bom):
    expected_skips: list[bytes] = []
    skips: list[bytes] = []
    expected = list(
        oracle_lines(io.BytesIO(data), max_bytes, expected_skips.append, strip_bom=strip_bom)
    )
    got = list(
        read_lines(
            io.BytesIO(data),
            max_bytes,
            skips.append,
            strip_bom=strip_bom,
            block_bytes=block_bytes,
        )
    )
    assert got == expected
    assert b"".join(skips) == b"".join(expected_skips)  # pieces may be cut differently


def test_a_long_line_read_in_small_pieces_is_joined_once():
    """A 4 MB line in 1 KB reads: linear, not a copy per read (this would take minutes)."""
    data = b"a" * (4 << 20) + b"\nb\n"
    lines = list(read_lines(io.BytesIO(data), 8 << 20, block_bytes=1024))
    assert [(line.number, line.size) for line in lines] == [(1, 4 << 20), (2, 1)]
