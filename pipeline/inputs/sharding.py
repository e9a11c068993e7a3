"""Cutting a stream of units (one document, or one query's candidates) into shards.

A shard is bounded by its item count and by two sizes each task measures its own way:
message bytes, and worst-case tokens (what the shard may cost the model, which must fit
the visibility timeout).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeVar

from schemas.document import Document

T = TypeVar("T")

# Shards are cut so their worst case takes at most this share of the visibility timeout.
VISIBILITY_SAFETY = 0.5
UNBOUNDED = 2**62  # a limit that never binds (no message, no visibility timeout)


@dataclass(frozen=True)
class ShardLimits:
    """What one shard may hold: items (documents or pairs), message bytes, worst-case tokens."""

    items: int
    bytes: int
    tokens: int  # worst-case tokens that fit the visibility timeout at the planned rate

    @classmethod
    def plan(
        cls, items: int, max_bytes: int, visibility_timeout: float, planned_tokens_per_second: float
    ) -> ShardLimits:
        tokens = int(visibility_timeout * VISIBILITY_SAFETY * planned_tokens_per_second)
        return cls(items=items, bytes=max_bytes, tokens=tokens)


class UnitSize(NamedTuple):
    bytes: int
    tokens: int


def over_limit(size: UnitSize, limits: ShardLimits) -> Literal["bytes", "tokens"] | None:
    """Which limit one unit alone exceeds (then it fits no shard), or None."""
    if size.bytes > limits.bytes:
        return "bytes"
    if size.tokens > limits.tokens:
        return "tokens"
    return None


def cut_sized_shards(
    units: Iterable[Sequence[T]], limits: ShardLimits, size: Callable[[Sequence[T]], UnitSize]
) -> Iterator[list[T]]:
    """Shards of whole units within every limit (a unit over a limit forms its own shard)."""

    def share(unit: Sequence[T]) -> int:
        # One size for the cutter: the larger of each limit's share, in millionths.
        measured = size(unit)
        return max(  # integer ceilings
            -(-measured.bytes * 1_000_000 // limits.bytes),
            -(-measured.tokens * 1_000_000 // limits.tokens),
        )

    return cut_unit_shards(units, limits.items, 1_000_000, share)


def text_chars(doc: Document) -> int:
    return len(doc.text)


def cut_shards(
    docs: Iterable[Document],
    max_docs: int,
    max_size: int | None = None,
    size: Callable[[Document], int] = text_chars,
) -> Iterator[list[Document]]:
    """Consecutive shards of at most `max_docs` documents and `max_size` in total `size`
    (characters of text unless told). A larger document forms a shard of its own."""
    return cut_unit_shards(
        ([doc] for doc in docs),
        max_docs,
        sys.maxsize if max_size is None else max_size,
        lambda unit: size(unit[0]),
    )


def cut_unit_shards(
    units: Iterable[Sequence[T]], max_items: int, max_size: int, size: Callable[[Sequence[T]], int]
) -> Iterator[list[T]]:
    """Shards of whole units (e.g. one query's candidates, which are ranked together).

    A shard takes units while it holds fewer than `max_items` items and their `size` adds
    up to at most `max_size`; a unit is never split, so one larger than a limit forms a
    shard of its own. A full shard is yielded at once, not when the next unit is read.
    """
    if max_items < 1:
        raise ValueError("max_docs must be >= 1")
    shard: list[T] = []
    total = 0
    for unit in units:
        unit_size = size(unit)
        if shard and (len(shard) + len(unit) > max_items or total + unit_size > max_size):
            yield shard
            shard, total = [], 0
        shard.extend(unit)
        total += unit_size
        if len(shard) >= max_items:
            yield shard
            shard, total = [], 0
    if shard:
        yield shard
