"""From validated input items to accepted documents: duplicates and oversize go to rejects."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from producers.inputs.first_seen import FirstSeen
from producers.inputs.validate import InputItem
from schemas.document import Document, Reject


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
        first = self._seen.first(doc.id, where)
        return None if first is None else f"duplicate id (first seen at {first})"


def document_bytes(doc: Document) -> int:
    """Bytes a document takes in a shard message (text, id and kept fields, UTF-8)."""
    size = len(doc.text.encode("utf-8")) + len(doc.id.encode("utf-8"))
    if doc.fields:
        size += sum(len(k) + len((v or "").encode("utf-8")) for k, v in doc.fields.items())
    return size


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
            for item in items:
                counts.input_records += 1
                result = item.result
                if isinstance(result, Document):
                    where = item.file or f"{source} {item.where}"
                    reason = duplicates.check(result, where)
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
