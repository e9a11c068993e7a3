"""Embedding: documents in, bge-m3 dense / sparse / ColBERT rows out."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.inputs.column_shards import column_shards
from pipeline.inputs.document_shards import document_shards
from pipeline.inputs.intake import IntakeCounts, RejectSink, accept_documents, document_bytes
from pipeline.inputs.read_ahead import read_ahead
from pipeline.inputs.readers.compressed import is_compressed
from pipeline.inputs.readers.formats import detect_format, read_records
from pipeline.inputs.readers.jsonl_columns import read_columns
from pipeline.inputs.references import ReferencedShard, read_reference
from pipeline.inputs.sharding import ShardLimits, UnitSize, cut_sized_shards, over_limit
from pipeline.inputs.validate import DocumentShape, InputItem
from pipeline.tasks.kind import Check, Computed, Progress, Reading, TaskKind
from schemas.document import Document
from schemas.job import JobSpec, ShardMessage, Task
from schemas.options import EncodeOptions, LongDocPolicy

if TYPE_CHECKING:
    import pyarrow as pa

    from pipeline.engine.embedder import EmbedEngine, EncodeStats
    from pipeline.engine.model import M3Model
    from pipeline.storage.location import Location

SPECIALS = 2  # CLS and EOS per sequence
# Plain JSONL inputs under this many bytes (in at most INLINE_READ_FILES files) are parsed
# in the producer itself: a reading process costs ~0.4 s of CPU to start (an interpreter and
# its imports), what parsing ~25 MiB costs, and an input this small leaves it little to
# overlap.
INLINE_READ_BYTES = 8 << 20
INLINE_READ_FILES = 16
# A worker's piece of a shard (TaskKind.pieces) holds about this much text at most: ~128k
# tokens, whose float16 ColBERT vectors are ~256 MiB.
PIECE_TEXT_BYTES = 512 << 10
EDGE_FRACTION = 4  # a shard's first and last pieces: this fraction of the others
EDGE_TEXT_BYTES = PIECE_TEXT_BYTES // EDGE_FRACTION


def worst_case_tokens(doc_bytes: int, options: EncodeOptions) -> int:
    """Tokens a document can cost at most: a token covers at least one byte of text."""
    if options.long_docs is LongDocPolicy.TRUNCATE:
        return min(doc_bytes + SPECIALS, options.max_length)
    stride = options.max_length - SPECIALS - options.chunk_overlap
    chunks = max(1, math.ceil(doc_bytes / stride))
    return chunks * options.max_length


def document_size(doc: Document, options: EncodeOptions) -> UnitSize:
    nbytes = document_bytes(doc)
    return UnitSize(nbytes, worst_case_tokens(nbytes, options))


def oversize_reason(
    doc: Document, limits: ShardLimits, options: EncodeOptions, size: UnitSize | None = None
) -> str | None:
    """Why one document cannot go in any shard, or None; `size`: its document_size."""
    return size_reason(size or document_size(doc, options), limits)


def size_reason(size: UnitSize, limits: ShardLimits) -> str | None:
    """Why a document of this size cannot go in any shard, or None."""
    over = over_limit(size, limits)
    if over == "bytes":
        return f"document is {size.bytes:,} bytes, above the {limits.bytes:,}-byte message limit"
    if over == "tokens":
        return (
            f"document may cost up to {size.tokens:,} tokens, more than one shard may hold "
            f"({limits.tokens:,}) within the visibility timeout"
        )
    return None


def cut_document_shards(
    docs: Iterable[Document], limits: ShardLimits, options: EncodeOptions
) -> Iterator[list[Document]]:
    """Shards bounded by documents, message bytes and worst-case tokens."""
    units = ([doc] for doc in docs)
    return cut_sized_shards(units, limits, lambda unit: document_size(unit[0], options))


def _tail_start(piece: Sequence[Document], edge: int) -> int:
    """Where the last `edge` documents (and EDGE_TEXT_BYTES of text) of `piece` start: at
    least its last document."""
    cut, text = len(piece), 0
    while cut > 0 and len(piece) - cut < edge:
        text += document_bytes(piece[cut - 1])
        if cut < len(piece) and text > EDGE_TEXT_BYTES:
            break
        cut -= 1
    return cut


def worth_a_reading_process(inputs: Sequence[Location]) -> bool:
    """Whether the inputs are large enough (or too many to size cheaply) for a reading
    process; one whose size cannot be read goes to it too, which reports the error."""
    if len(inputs) > INLINE_READ_FILES:
        return True
    total = 0
    try:
        for location in inputs:
            total += location.size()
            if total >= INLINE_READ_BYTES:
                return True
    except (OSError, PipelineError):
        return True
    return False


class EmbedTask(TaskKind):
    task = Task.EMBED
    command = "encode"
    model_setting = "model"
    seconds_name = "encode_seconds"
    rate_name = "tokens_per_second"
    reusable = True

    def detect_format(self, location: Location | Path | str, requested: str = "auto") -> str:
        return detect_format(location, requested)

    def read(self, location: Location, fmt: str, reading: Reading) -> Iterator[InputItem]:
        return read_records(
            location,
            fmt,
            id_field=reading.id_field,
            text_field=reading.text_field,
            keep_fields=reading.keep_fields,
            max_record_bytes=reading.max_record_bytes,
        )

    def accept(
        self,
        sources: Iterable[tuple[str, Iterable[InputItem]]],
        rejects: RejectSink,
        counts: IntakeCounts,
        check: Check | None,
    ) -> Iterator[list[Document]]:
        docs = accept_documents(
            sources, rejects, counts, check=(lambda doc: check([doc])) if check else None
        )
        return ([doc] for doc in docs)

    def shards(
        self,
        sources: Iterable[tuple[str, Iterable[InputItem]]],
        options: EncodeOptions,
        limits: ShardLimits,
        rejects: RejectSink,
        counts: IntakeCounts,
        *,
        strict: bool,
    ) -> Iterator[list[Document]]:
        # What TaskKind.shards makes, in one loop a document (the producer's hot path).
        def oversize(doc: Document, size: UnitSize) -> str:
            return oversize_reason(doc, limits, options, size) or ""

        return document_shards(
            sources,
            rejects,
            counts,
            limits,
            lambda nbytes: worst_case_tokens(nbytes, options),
            oversize if strict else None,
        )

    def referenced_shards(
        self,
        inputs: Sequence[Location],
        formats: Sequence[str],
        reading: Reading,
        options: EncodeOptions,
        limits: ShardLimits,
        rejects: RejectSink,
        counts: IntakeCounts,
    ) -> Iterator[ReferencedShard] | None:
        # Plain JSONL inputs only: the others cannot be pointed at by byte ranges.
        if any(
            fmt != "jsonl" or is_compressed(loc) for loc, fmt in zip(inputs, formats, strict=True)
        ):
            return None
        shape = DocumentShape(reading.id_field, reading.text_field, reading.keep_fields)
        urls = [location.url for location in inputs]  # reopened in the reading process
        if worth_a_reading_process(inputs):
            blocks = read_ahead(read_columns, urls, shape, reading.max_record_bytes)
        else:
            blocks = read_columns(urls, shape, reading.max_record_bytes)
        return column_shards(
            blocks,
            {location.uri: i for i, location in enumerate(inputs)},
            rejects,
            counts,
            limits,
            lambda nbytes: worst_case_tokens(nbytes, options),
            lambda size: size_reason(size, limits) or "",
        )

    def shard_items(self, message: ShardMessage, spec: JobSpec) -> Sequence[Document]:
        if message.ref is None:
            return message.documents
        shape = DocumentShape(spec.id_field, spec.text_field, tuple(spec.keep_fields))
        return read_reference(message.ref, spec.inputs, shape, spec.max_record_bytes)

    def unit_size(self, unit: Sequence[Document], options: EncodeOptions) -> UnitSize:
        return document_size(unit[0], options)

    def oversize_reason(
        self,
        unit: Sequence[Document],
        limits: ShardLimits,
        options: EncodeOptions,
        size: UnitSize | None = None,
    ) -> str | None:
        return oversize_reason(unit[0], limits, options, size)

    def model_loader(self) -> Callable[..., M3Model]:
        from pipeline.engine.model import load_model

        return load_model

    def job_options(self, spec: JobSpec) -> Hashable:
        return spec.options

    def engine(self, model: M3Model, options: EncodeOptions) -> EmbedEngine:
        from pipeline.engine.embedder import EmbedEngine

        return EmbedEngine(model, options)

    def compute(
        self, engine: EmbedEngine, items: Sequence[Document], keep_fields: Sequence[str] = ()
    ) -> Computed:
        return self._computed(engine.encode(items), items, keep_fields)

    def compute_stream(
        self,
        engine: EmbedEngine,
        shards: Iterable[Sequence[Document]],
        keep_fields: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> Generator[tuple[Sequence[Document], Computed], None, None]:
        # The engine tokenizes the next shard while this one runs, and reports per batch;
        # closed with this generator, it lets go of the device at once.
        with contextlib.closing(engine.encode_stream(shards, progress)) as results:
            for shard, result in results:
                yield shard, self._computed(result, shard, keep_fields)

    @staticmethod
    def _computed(result: Any, docs: Sequence[Document], keep_fields: Sequence[str]) -> Computed:
        from pipeline.engine.table import with_fields

        table = with_fields(result.table, docs, keep_fields)
        return Computed(table=table, stats=result.stats, rows=table.num_rows)

    def pieces(self, items: Sequence[Document], size: int) -> list[Sequence[Document]]:
        """Documents are independent: pieces of `size` documents at most, and of about
        PIECE_TEXT_BYTES of text (long documents: fewer a piece, so a piece's vectors stay
        bounded), each batched by length on its own. The first and the last piece are a
        quarter of that: the first is tokenized, and the last written, while nothing else
        of the shard computes."""
        edge = max(1, size // EDGE_FRACTION)
        pieces: list[Sequence[Document]] = []
        start, text = 0, 0
        for index, doc in enumerate(items):
            most, text_most = (edge, EDGE_TEXT_BYTES) if not pieces else (size, PIECE_TEXT_BYTES)
            if index > start and (index - start >= most or text >= text_most):
                pieces.append(items[start:index])
                start, text = index, 0
            text += document_bytes(doc)
        if start < len(items):
            pieces.append(items[start:])
        if len(pieces) > 1:  # the last piece's tail alone
            cut = _tail_start(pieces[-1], edge)
            if cut > 0:
                last = pieces.pop()
                pieces += [last[:cut], last[cut:]]
        return pieces

    def part_table(
        self, table: pa.Table, items: Sequence[Document], keep_fields: Sequence[str] = ()
    ) -> pa.Table:
        from pipeline.storage.finished_output import with_document_digests

        return with_document_digests(table, items, keep_fields)  # what --reuse checks

    def new_stats(self) -> EncodeStats:
        from pipeline.engine.embedder import EncodeStats

        return EncodeStats()

    def manifest_job(self, reading: Reading, engine: EmbedEngine) -> dict[str, object]:
        return {
            "id_field": reading.id_field,
            "text_field": reading.text_field,
            "keep_fields": list(reading.keep_fields),
            "options": engine.options.model_dump(mode="json"),
        }
