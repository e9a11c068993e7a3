"""A shard's message (by reference to the inputs where it can be, else carrying its items),
registered in Redis before it is published."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import cast

from pipeline.inputs.references import ReferencedShard, shard_reference
from pipeline.jobs.resume import message_digest
from pipeline.jobs.store import JobStore
from schemas.document import Document
from schemas.job import ShardMessage
from schemas.pair import Pair
from schemas.reuse_plan import ReuseRun
from schemas.tenant import Priority

Publish = Callable[[ShardMessage, str, Priority], None]  # (message, queue, priority)


def shard_message(
    job_id: str,
    index: int,
    shard: list[Document] | list[Pair] | ReferencedShard,
    digest: str = "",
    references: Mapping[str, int] | None = None,
    reuse: list[ReuseRun] | None = None,
) -> ShardMessage:
    """The shard's message: by reference to the inputs (URI -> index) where every document
    can be pointed at, else with its documents or pairs; `reuse`: rows to copy, if any."""
    runs = reuse or None
    if isinstance(shard, ReferencedShard):
        return ShardMessage(job_id=job_id, shard=index, ref=shard.ref, reuse=runs)
    payload = "pairs" if isinstance(shard[0], Pair) else "documents"
    if references is not None and payload == "documents":
        ref = shard_reference(cast(list[Document], shard), references, digest)
        if ref is not None:
            return ShardMessage(job_id=job_id, shard=index, ref=ref, reuse=runs)
    return ShardMessage.model_validate(
        {"job_id": job_id, "shard": index, payload: shard, "reuse": runs}
    )


def enqueue(
    store: JobStore,
    publish: Publish,
    message: ShardMessage,
    queue: str,
    priority: Priority,
    digest: str,
) -> None:
    # Registered before it is sent, so a fast worker always finds it queued. The digest
    # lets a worker tell this message from a stale one of an earlier submission (--resume).
    store.queue_shard(message.job_id, message.shard, digest, message.size, message_digest(message))
    publish(message, queue, priority)
