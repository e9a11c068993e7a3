"""Shards by reference (schemas/shard_ref.py): made by the producer, read back by a worker.

The producer has read, validated and accepted the shard's documents; when each knows its
line of a plain JSONL input (Document.origin), the shard goes out as byte ranges and runs
of line numbers. The worker reads those ranges with the same line reader and record
parser, and the result must be the very documents the producer accepted: same count, same
digest. A file changed (or replaced) since submit fails the shard with that reason.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from pipeline.errors import InputError
from pipeline.inputs.readers.jsonl import line_record
from pipeline.inputs.readers.lines import read_lines
from pipeline.inputs.validate import RecordShape
from pipeline.jobs.resume import documents_digest
from pipeline.storage.location import open_location
from schemas.document import Document
from schemas.shard_ref import Segment, ShardRef

# A gap of skipped bytes (rejected or duplicate records, blank lines) larger than this
# starts a new segment, so a worker never reads much that is not its shard's.
MAX_GAP_BYTES = 64 * 1024


class InputChanged(InputError):
    """The referenced input no longer holds the documents the producer accepted."""


@dataclass(frozen=True)
class ReferencedShard:
    """A shard cut from documents known only by where they are and their digests
    (pipeline/inputs/column_shards.py): its reference is all there is of it."""

    ref: ShardRef


def shard_reference(
    shard: Sequence[Document], inputs: Mapping[str, int], digest: str
) -> ShardRef | None:
    """The shard as a reference to the inputs (URI -> index in the job's inputs), or None
    if a document cannot be pointed at (read from a compressed or non-JSONL input)."""
    return origins_reference([doc.origin for doc in shard], inputs, digest)


def origins_reference(
    origins: Sequence[tuple[str, int, int, int] | None], inputs: Mapping[str, int], digest: str
) -> ShardRef | None:
    """The reference to a shard of documents found at these places, in order; None if one
    cannot be pointed at. One pass, no objects per document: it runs for every document a
    producer submits."""
    segments: list[Segment] = []
    runs: list[list[int]] = []  # of the segment being built: [first, last] line numbers
    index = start = end = first_line = last_line = 0
    for origin in origins:
        if origin is None:
            return None
        source, line, line_start, line_end = origin
        input_index = inputs.get(source)
        if input_index is None:
            return None
        if runs and (
            input_index != index
            or line_start - end > MAX_GAP_BYTES
            or line <= last_line  # never backwards (not made by the readers)
        ):
            segments.append(_segment(index, start, end, first_line, runs))
            runs = []
        if not runs:
            index, start, first_line = input_index, line_start, line
            runs.append([line, line])
        elif runs[-1][1] == line - 1:
            runs[-1][1] = line
        else:
            runs.append([line, line])
        end, last_line = line_end, line
    if not runs:
        return None
    segments.append(_segment(index, start, end, first_line, runs))
    return ShardRef(segments=segments, documents=len(origins), digest=digest)


def _segment(
    input_index: int, start: int, end: int, first_line: int, runs: list[list[int]]
) -> Segment:
    return Segment(
        input=input_index,
        start=start,
        end=end,
        first_line=first_line,
        runs=[(low, high) for low, high in runs],
    )


def read_reference(
    ref: ShardRef,
    inputs: Sequence[str],
    shape: RecordShape,
    max_record_bytes: int,
) -> list[Document]:
    """The shard's documents, read from the job's inputs; InputChanged if they are not the
    ones the producer accepted."""
    documents: list[Document] = []
    for segment in ref.segments:
        if segment.input >= len(inputs):
            raise InputChanged(f"the shard names input {segment.input}; the job has {len(inputs)}")
        documents.extend(_read_segment(segment, inputs[segment.input], shape, max_record_bytes))
    if len(documents) != ref.documents or documents_digest(documents) != ref.digest:
        raise InputChanged(
            f"{inputs[ref.segments[0].input]}: the referenced lines no longer hold the "
            "documents accepted at submit (was the input changed?): resubmit the job"
        )
    return documents


def _read_segment(
    segment: Segment, uri: str, shape: RecordShape, max_record_bytes: int
) -> Iterator[Document]:
    location = open_location(uri)
    wanted = iter(segment.runs)
    low, high = next(wanted)
    try:
        handle = location.open_range(segment.start, segment.end)
    except FileNotFoundError:
        raise InputChanged(f"{uri} is gone: workers read a shard's documents from it") from None
    with handle:
        lines = read_lines(handle, max_record_bytes, strip_bom=False)
        for line in lines:
            number = segment.first_line + line.number - 1
            while number > high:
                nxt = next(wanted, None)
                if nxt is None:
                    return
                low, high = nxt
            if number < low:
                continue
            record = None if line.data is None else line_record(line.data, uri, number, shape)
            if not isinstance(record, Document):
                raise InputChanged(f"{uri} line {number} no longer holds the document read there")
            yield record
