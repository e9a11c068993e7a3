"""From validated input items to accepted documents: duplicates and oversize go to rejects."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from pipeline.inputs.indexes.first_seen import FirstSeen
from pipeline.inputs.validate import InputItem
from schemas.document import Document, Reject

# Records read ahead so their ids are looked up together: at most this many, holding at
# most ~DUPLICATE_BATCH_BYTES of text (a batch of long documents stays small in memory).
DUPLICATE_BATCH = 1024
DUPLICATE_BATCH_BYTES = 1 << 20


def read_batches(items: Iterable[InputItem]) -> Iterator[list[InputItem]]:
    """`items` in order, in lists of up to DUPLICATE_BATCH items and, past the first,
    DUPLICATE_BATCH_BYTES characters of document text."""
    batch: list[InputItem] = []
    size = 0
    for item in items:
        batch.append(item)
        result = item.result
        if isinstance(result, Document):
            size += len(result.text)
        if len(batch) >= DUPLICATE_BATCH or size >= DUPLICATE_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


@dataclass
class IntakeCounts:
    input_records: int = 0
    documents: int = 0
    rejected: int = 0

    def balanced(self) -> bool:
        return self.input_records == self.documents + self.rejected


class RejectSink(Protocol):
    """Anything with `add(Reject)`, e.g. pipeline.storage.output_dir.RejectLog."""

    def add(self, reject: Reject) -> None: ...


class DuplicateIds:
    """Policy: the first record with an id wins; later ones are rejected, naming the first."""

    def __init__(self, seen: FirstSeen) -> None:
        self._seen = seen

    def check(self, doc: Document, where: str) -> str | None:
        """None for a new id, else the reason to reject this record."""
        return self.check_many([doc], [where])[0]

    def check_many(self, docs: list[Document], wheres: list[str]) -> list[str | None]:
        """`check` for each document in turn, in one look-up of the index."""
        firsts = self._seen.first_many([doc.id for doc in docs], wheres)
        return [None if first is None else duplicate_reason(first) for first in firsts]

    def batch_verdicts(self, batch: list[InputItem], source: str) -> Iterator[str | None]:
        """`check` for the documents of a batch of items read from `source`, in order."""
        docs = [item for item in batch if isinstance(item.result, Document)]
        wheres = [item.file or f"{source} {item.where}" for item in docs]
        return iter(self.check_many([item.result for item in docs], wheres))


def duplicate_reason(first: str) -> str:
    """Why a record whose id was first seen at `first` is rejected."""
    return f"duplicate id (first seen at {first})"


def document_bytes(doc: Document) -> int:
    """Bytes a document takes in a shard message (text, id and kept fields, UTF-8)."""
    size = plain_document_bytes(doc.id, doc.text)
    if doc.fields:
        size += sum(len(k) + len((v or "").encode("utf-8")) for k, v in doc.fields.items())
    return size


def plain_document_bytes(doc_id: str, text: str) -> int:
    """`document_bytes` of a document without kept fields."""
    # An ASCII string's length is its UTF-8 size.
    return (len(text) if text.isascii() else len(text.encode("utf-8"))) + (
        len(doc_id) if doc_id.isascii() else len(doc_id.encode("utf-8"))
    )


def accept_documents(
    sources: Iterable[tuple[str, Iterable[InputItem]]],
    rejects: RejectSink,
    counts: IntakeCounts,
    *,
    check: Callable[[Document], str | None] | None = None,
) -> Iterator[Document]:
    """Documents that pass validation, the duplicate-id policy (first wins) and `check`.

    `check` returns the reason to reject a valid document (e.g. too large), or None.

    Every item read is counted once: as a document yielded, or as a reject written.
    """
    with FirstSeen() as seen:
        duplicates = DuplicateIds(seen)
        for source, items in sources:
            # Looked up a batch at a time; decided, counted and yielded in order.
            for batch in read_batches(items):
                verdicts = duplicates.batch_verdicts(batch, source)
                for item in batch:
                    counts.input_records += 1
                    result = item.result
                    if isinstance(result, Document):
                        reason = next(verdicts)
                        if reason is None and check is not None:
                            reason = check(result)
                        if reason is None:
                            counts.documents += 1
                            yield result
                            continue
                        result = Reject(
                            source=item.file or source,
                            line=item.line,
                            row=item.row,
                            id=result.id,
                            reason=reason,
                        )
                    rejects.add(result)
                    counts.rejected += 1
