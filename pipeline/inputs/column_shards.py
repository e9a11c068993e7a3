"""Shards by reference cut from documents read as columns
(pipeline/inputs/readers/jsonl_columns.py).

The same shards, digests and rejects as `document_shards` over the same inputs
(tests/pipeline/inputs/test_column_shards.py holds them equal), from a few numbers a document:
the producer's path when every input is a plain JSONL file the workers can read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping

from pipeline.inputs.document_shards import SHARE
from pipeline.inputs.indexes.first_seen import FirstSeen
from pipeline.inputs.intake import IntakeCounts, RejectSink, duplicate_reason
from pipeline.inputs.readers.jsonl_columns import DIGEST_BYTES, DocumentColumns
from pipeline.inputs.references import ReferencedShard, origins_reference
from pipeline.inputs.sharding import ShardLimits, UnitSize
from pipeline.jobs.resume import join_digests
from schemas.document import Reject


def column_shards(
    blocks: Iterable[DocumentColumns],
    inputs: Mapping[str, int],
    rejects: RejectSink,
    counts: IntakeCounts,
    limits: ShardLimits,
    tokens_for: Callable[[int], int],
    oversize: Callable[[UnitSize], str],
) -> Iterator[ReferencedShard]:
    """Shards of the documents that pass validation and the duplicate-id policy (first
    wins), within `limits`, as references to `inputs` (URI -> index in the job's inputs).

    A document costs `tokens_for(its bytes)` tokens at most; one over a limit is rejected
    with `oversize(its size)`. Every record read is counted once.
    """
    max_items, max_bytes, max_tokens = limits.items, limits.bytes, limits.tokens
    if max_items < 1:
        raise ValueError("max_docs must be >= 1")
    origins: list[tuple[str, int, int, int]] = []
    digests: list[bytes] = []
    total = 0

    def shard() -> ReferencedShard:
        ref = origins_reference(origins, inputs, join_digests(digests))
        if ref is None:  # a bug: every input of this path is in `inputs`
            raise AssertionError("a document read by columns has no reference")
        return ReferencedShard(ref)

    with FirstSeen() as seen, _closed_after(blocks) as reading:
        for block in reading:
            source, ids, lines, starts, ends = (
                block.source,
                block.ids,
                block.lines,
                block.starts,
                block.ends,
            )
            sizes, block_digests = block.sizes, block.digests
            firsts = seen.first_many(ids, [f"{source} line {number}" for number in lines])
            pending = iter(block.rejects)
            reject_at, reject = next(pending, (-1, None))
            for k, first in enumerate(firsts):
                while reject_at == k:
                    _add(rejects, counts, reject)
                    reject_at, reject = next(pending, (-1, None))
                nbytes = sizes[k]
                tokens = tokens_for(nbytes)
                reason = None
                if first is not None:
                    reason = duplicate_reason(first)
                elif nbytes > max_bytes or tokens > max_tokens:
                    reason = oversize(UnitSize(nbytes, tokens))
                if reason is not None:
                    _add(
                        rejects,
                        counts,
                        Reject(source=source, line=lines[k], id=ids[k], reason=reason),
                    )
                    continue
                counts.documents += 1
                counts.input_records += 1
                share = max(-(-nbytes * SHARE // max_bytes), -(-tokens * SHARE // max_tokens))
                if origins and (len(origins) + 1 > max_items or total + share > SHARE):
                    yield shard()
                    origins, digests, total = [], [], 0
                origins.append((source, lines[k], starts[k], ends[k]))
                digests.append(block_digests[k * DIGEST_BYTES : (k + 1) * DIGEST_BYTES])
                total += share
                if len(origins) >= max_items:
                    yield shard()
                    origins, digests, total = [], [], 0
            while reject is not None:
                _add(rejects, counts, reject)
                reject_at, reject = next(pending, (-1, None))
    if origins:
        yield shard()


@contextlib.contextmanager
def _closed_after(blocks: Iterable[DocumentColumns]) -> Iterator[Iterator[DocumentColumns]]:
    """`blocks` read within the block, then closed (a reading process ends with it), even
    when the shards' consumer stops early or fails."""
    reading = iter(blocks)
    try:
        yield reading
    finally:
        close = getattr(reading, "close", None)
        if close is not None:
            close()


def _add(rejects: RejectSink, counts: IntakeCounts, reject: Reject | None) -> None:
    assert reject is not None
    rejects.add(reject)
    counts.input_records += 1
    counts.rejected += 1
