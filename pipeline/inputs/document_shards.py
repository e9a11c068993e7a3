"""Documents from validated items to shards in one loop: the producer's per-document path.

The same shards and rejects as `accept_documents` feeding `cut_sized_shards` (the generic
path, which rerank's units take; tests/pipeline/inputs/test_document_shards.py holds the two
equal), without their ~15 Python calls a document: at 10^7 documents those calls were a
third of the producer's time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from pipeline.inputs.indexes.first_seen import FirstSeen
from pipeline.inputs.intake import (
    DuplicateIds,
    IntakeCounts,
    RejectSink,
    document_bytes,
    read_batches,
)
from pipeline.inputs.sharding import ShardLimits, UnitSize
from pipeline.inputs.validate import InputItem
from schemas.document import Document, Reject

SHARE = 1_000_000  # a shard's size budget, in millionths of each limit (as cut_sized_shards)


def document_shards(
    sources: Iterable[tuple[str, Iterable[InputItem]]],
    rejects: RejectSink,
    counts: IntakeCounts,
    limits: ShardLimits,
    tokens_for: Callable[[int], int],
    oversize: Callable[[Document, UnitSize], str] | None,
) -> Iterator[list[Document]]:
    """Shards of the documents that pass validation and the duplicate-id policy (first
    wins), within `limits`; a document costs `tokens_for(its bytes)` tokens at most.

    `oversize` (strict: a queue message must fit): the reason to reject a document over a
    limit; None: such a document forms a shard of its own. Every item read is counted once.
    """
    max_items, max_bytes, max_tokens = limits.items, limits.bytes, limits.tokens
    if max_items < 1:
        raise ValueError("max_docs must be >= 1")
    shard: list[Document] = []
    total = 0
    with FirstSeen() as seen:
        duplicates = DuplicateIds(seen)
        for source, items in sources:
            for batch in read_batches(items):
                verdicts = duplicates.batch_verdicts(batch, source)
                for item in batch:
                    counts.input_records += 1
                    doc = item.result
                    if isinstance(doc, Document):
                        reason = next(verdicts)
                        if reason is None:
                            nbytes = document_bytes(doc)
                            tokens = tokens_for(nbytes)
                            if oversize is not None and (nbytes > max_bytes or tokens > max_tokens):
                                reason = oversize(doc, UnitSize(nbytes, tokens))
                        if reason is None:
                            counts.documents += 1
                            share = max(
                                -(-nbytes * SHARE // max_bytes), -(-tokens * SHARE // max_tokens)
                            )
                            if shard and (len(shard) + 1 > max_items or total + share > SHARE):
                                yield shard
                                shard, total = [], 0
                            shard.append(doc)
                            total += share
                            if len(shard) >= max_items:
                                yield shard
                                shard, total = [], 0
                            continue
                        doc = Reject(
                            source=item.file or source,
                            line=item.line,
                            row=item.row,
                            id=doc.id,
                            reason=reason,
                        )
                    rejects.add(doc)
                    counts.rejected += 1
    if shard:
        yield shard
