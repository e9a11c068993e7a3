"""Cutting a stream of documents into shards bounded by count and by text size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from schemas.document import Document


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
    if max_docs < 1:
        raise ValueError("max_docs must be >= 1")
    shard: list[Document] = []
    total = 0
    for doc in docs:
        doc_size = size(doc)
        if shard and max_size is not None and total + doc_size > max_size:
            yield shard
            shard, total = [], 0
        shard.append(doc)
        total += doc_size
        if len(shard) >= max_docs:
            yield shard
            shard, total = [], 0
    if shard:
        yield shard
