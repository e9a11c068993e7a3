"""Cutting a stream of documents into shards bounded by count and by text size."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from schemas.document import Document


def cut_shards(
    docs: Iterable[Document], max_docs: int, max_chars: int | None = None
) -> Iterator[list[Document]]:
    """Consecutive shards of at most `max_docs` documents and about `max_chars` characters.

    A single document larger than `max_chars` forms a shard of its own.
    """
    if max_docs < 1:
        raise ValueError("max_docs must be >= 1")
    shard: list[Document] = []
    chars = 0
    for doc in docs:
        if shard and max_chars is not None and chars + len(doc.text) > max_chars:
            yield shard
            shard, chars = [], 0
        shard.append(doc)
        chars += len(doc.text)
        if len(shard) >= max_docs:
            yield shard
            shard, chars = [], 0
    if shard:
        yield shard
