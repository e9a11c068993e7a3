"""Cutting a stream of documents (or units of pairs) into shards bounded by count and size."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from schemas.document import Document

T = TypeVar("T")


def text_chars(doc: Document) -> int:
    return len(doc.text)


def cut_shards(
    docs: Iterable[Document],
    max_docs: int,
    max_size: int | None = None,
    size: Callable[[Document], int] = text_chars,
) -> Iterator[list[Document]]:
    """Consecutive shards of at most `max_docs` documents and `max_size` in total `size`.

    `size` defaults to characters of text; the queue producer measures message bytes.
    A single document larger than `max_size` forms a shard of its own.
    """
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
