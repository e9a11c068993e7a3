"""Plain JSONL inputs read as columns: each block's documents as ids, places, sizes and
digests, with no object per document.

What a producer needs of a document it sends by reference is its id (the duplicate-id
policy), where it is (the shard's byte ranges), its size (the cutter) and its digest (the
shard's digest): `column_shards` (pipeline/inputs/column_shards.py) cuts shards from these
alone. The reading, parsing and validating that make them, two thirds of a producer's work
a document, can then run in a process of their own (pipeline/inputs/read_ahead.py) and
send back a few numbers a document instead of the documents.

Every non-blank line is one record, as `read_jsonl` reads it (tests/pipeline/inputs/test_columns.py
holds the two equal): a document in the columns, or a reject with the same reason.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from pipeline.errors import UnreadableInput
from pipeline.inputs.intake import document_bytes, plain_document_bytes
from pipeline.inputs.readers.formats import unreadable_reject
from pipeline.inputs.readers.jsonl import fast_json, jsonl_blocks, line_record
from pipeline.inputs.readers.lines import Line, LineBlock, oversize_reason
from pipeline.inputs.validate import DocumentShape
from pipeline.jobs.resume import item_digest, plain_document_digest
from pipeline.storage.location import Location, open_location
from schemas.document import Document, Origin, Reject

DIGEST_BYTES = 32  # an item_digest (sha256)


class DocumentColumns(NamedTuple):
    """The records of consecutive lines of one input: its documents as columns (the k-th
    of each list is the k-th document) and its rejects; each non-blank line is one."""

    source: str  # the input's URI
    ids: list[str]
    lines: array[int]  # 1-based line numbers
    starts: array[int]  # byte offset of each document's line
    ends: array[int]  # past its newline
    sizes: array[int]  # bytes in a shard message (intake.document_bytes)
    digests: bytes  # item_digest of each, DIGEST_BYTES apiece
    rejects: list[tuple[int, Reject]]  # (documents before it in these columns, reject)

    @classmethod
    def rejected(cls, source: str, reject: Reject) -> DocumentColumns:
        """One record, rejected."""
        return cls(source, [], array("q"), array("q"), array("q"), array("q"), b"", [(0, reject)])


def read_columns(
    inputs: Iterable[Location | str], shape: DocumentShape, max_record_bytes: int
) -> Iterator[DocumentColumns]:
    """The columns of each plain (uncompressed) JSONL input in turn, a block at a time.

    As `read_records`, an input that cannot be read, or the rest of one that fails
    partway, is one reject."""
    for where in inputs:
        location = open_location(where)
        source = location.uri
        try:
            for block in jsonl_blocks(location, max_record_bytes):
                yield _columns(block, source, shape, max_record_bytes)
        except UnreadableInput as exc:
            yield DocumentColumns.rejected(source, unreadable_reject(exc, source))


def _columns(
    block: LineBlock | Line, source: str, shape: DocumentShape, max_record_bytes: int
) -> DocumentColumns:
    if isinstance(block, Line):  # over the limit, skipped
        reason = oversize_reason(block.size, max_record_bytes)
        return DocumentColumns.rejected(
            source, Reject(source=source, line=block.number, reason=reason)
        )
    ids: list[str] = []
    lines, starts, ends, sizes = array("q"), array("q"), array("q"), array("q")
    digests: list[bytes] = []
    rejects: list[tuple[int, Reject]] = []
    quick = not shape.keep_fields
    offset = block.start
    last = block.last_number
    for number, data in enumerate(block.lines, block.number):
        start = offset
        offset += len(data) + (1 if number < last or block.last_newline else 0)
        if not data.strip():
            continue
        plain = shape.plain(fast_json(data)) if quick else None
        if plain is not None:  # most lines
            doc_id, text = plain
            ids.append(doc_id)
            lines.append(number)
            starts.append(start)
            ends.append(offset)
            sizes.append(plain_document_bytes(doc_id, text))
            digests.append(plain_document_digest(doc_id, text))
            continue
        record = line_record(data, source, number, shape, Origin(source, number, start, offset))
        if isinstance(record, Document):
            ids.append(record.id)
            lines.append(number)
            starts.append(start)
            ends.append(offset)
            sizes.append(document_bytes(record))
            digests.append(item_digest(record))
        else:
            rejects.append((len(ids), record))
    return DocumentColumns(source, ids, lines, starts, ends, sizes, b"".join(digests), rejects)
