"""`--reuse` on the compute side: copy the planned rows of a shard from the previous output,
encode the rest, and put every row back in input order, a piece of the shard at a time.

A shard is computed and written in pieces (`TaskKind.pieces`), and so is a shard with reuse
runs: each piece's documents are either copied (the rows of its part of a run, decoded from
the previous part a few rows at a time: `PartFile`) or encoded, and the piece's rows go to
the part writer as slices of both, in order. So a worker holds a few pieces of copied rows at
once (those read ahead, the one being written), as it holds a few computed ones, whatever the
shard's or the previous part's size; the copies are read in the compute stream's reading
thread while the model works.

A copy is trusted only after it is checked here, where the documents are: the previous
part's model identity and options equal this engine's, and each document of the run has the
id and text digest of the document it stands for, in the very file the rows are read from.
A run is checked as a whole, before any of its rows are copied. A run that fails a check (the
previous output changed since submit, a forged plan, a damaged file) is encoded instead, so
the output is always what a full encode gives.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.errors import ReuseError
from pipeline.storage.finished_output import (
    FinishedOutput,
    PartFile,
    PreviousPart,
    document_digest,
    identity,
    identity_difference,
)
from pipeline.tasks.kind import TaskEngine
from schemas.document import Document
from schemas.options import StorageDtype
from schemas.reuse_plan import ReuseRun
from schemas.vector_layout import upgrade_vectors

log = logging.getLogger(__name__)

OPEN_PARTS = 4  # previous part files open at once for one shard (a reordered corpus: many)


@dataclass
class ReusePiece:
    """A piece of a shard: its documents, those to encode, and in what order its rows come:
    `layout` holds, in document order, copied rows (a table) and counts of documents whose
    rows are encoded (an int)."""

    docs: Sequence[Document]
    to_encode: list[Document]
    layout: list[pa.Table | int]
    reused: int  # documents copied

    def merged(self, encoded: pa.Table) -> pa.Table:
        """The piece's rows: `encoded` (the rows of `to_encode`, in order) and the copies,
        in document order (chunks in order). Slices of both, not a copy of their bytes."""
        starts = _document_rows(encoded)
        if len(starts) - 1 != len(self.to_encode):
            raise AssertionError("the encoded rows are not those of the piece's documents")
        parts, done = [], 0
        for item in self.layout:
            if isinstance(item, int):
                begin, end = int(starts[done]), int(starts[done + item])
                parts.append(encoded.slice(begin, end - begin))
                done += item
            else:
                parts.append(item)
        return pa.concat_tables(parts) if parts else encoded


class ShardReuse:
    """One shard's reuse runs, checked and copied piece by piece (see the module's doc).
    `schema` is what this job writes. Close it when done: it holds previous parts open."""

    def __init__(
        self,
        docs: Sequence[Document],
        runs: Sequence[ReuseRun],
        previous: FinishedOutput,
        engine: TaskEngine,
        schema: pa.Schema,
        keep_fields: Sequence[str] = (),
    ) -> None:
        self.docs, self.previous, self.schema = docs, previous, schema
        self.keep_fields = tuple(keep_fields)
        self.runs = sorted(runs, key=lambda run: run.at)
        self._wanted = identity(engine.file_metadata())
        self._dtype = StorageDtype(str(self._wanted.get("dtype", StorageDtype.FLOAT16.value)))
        self._open: OrderedDict[int, _OpenPart] = OrderedDict()  # most recently used last
        self._refused: set[int] = set()  # parts that cannot be copied from
        self._last_read: PartFile | None = None

    def pieces(self, pieces: Iterable[Sequence[Document]]) -> Iterator[ReusePiece]:
        """Each piece (consecutive, from the shard's first document) with its copies."""
        at, next_run = 0, 0
        for docs in pieces:
            end = at + len(docs)
            copied_here = np.zeros(len(docs), dtype=bool)
            layout: list[pa.Table | int] = []
            placed = at  # documents before this one are in the layout
            while next_run < len(self.runs) and _end(self.runs[next_run]) <= at:
                next_run += 1
            index = next_run
            while index < len(self.runs) and self.runs[index].at < end:
                run = self.runs[index]
                first, last = max(at, run.at), min(end, _end(run))
                _encoded(layout, first - placed)
                rows = self._copy(index, first, last)
                if rows is not None:
                    layout.append(rows)
                    copied_here[first - at : last - at] = True
                else:
                    _encoded(layout, last - first)
                placed = last
                index += 1
            _encoded(layout, end - placed)
            to_encode = [doc for doc, done in zip(docs, copied_here, strict=True) if not done]
            yield ReusePiece(docs, to_encode, layout, int(copied_here.sum()))
            at = end

    def close(self) -> None:
        for part in self._open.values():
            part.file.close()
        self._open.clear()
        self._last_read = None

    def _copy(self, index: int, first: int, last: int) -> pa.Table | None:
        """The rows of the shard's documents `first`..`last - 1`, all of run `index`, or
        None when they are encoded instead."""
        run = self.runs[index]
        part = self._part(run.part)
        if part is None:
            return None
        if index not in part.checked:
            part.checked[index] = _checked(part.file.index, run, self.docs, self.keep_fields)
        ordinal = part.checked[index]
        if ordinal is None:
            return None
        starts = part.file.index.starts
        begin = int(starts[ordinal + first - run.at])
        end = int(starts[ordinal + last - run.at])
        if self._last_read is not None and self._last_read is not part.file:
            self._last_read.forget_rows()  # one file's decoded rows in memory at a time
        self._last_read = part.file
        try:
            rows = part.file.rows(begin, end, self.schema.names)
            copy = upgrade_vectors(rows, self._dtype).select(self.schema.names).cast(self.schema)
        except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
            log.warning("--reuse: part %d rows %d..%d cannot be copied (%s): encoded",
                        run.part, begin, end - 1, exc)  # fmt: skip
            return None
        counts = np.diff(starts[ordinal + first - run.at : ordinal + last - run.at + 1])
        docs = zip(self.docs[first:last], counts.tolist(), strict=True)
        if copy.column("id").to_pylist() != [doc.id for doc, n in docs for _ in range(n)]:
            log.warning("--reuse: part %d rows %d..%d are not the documents its index names: "
                        "encoded", run.part, begin, end - 1)  # fmt: skip
            return None
        return copy

    def _part(self, number: int) -> _OpenPart | None:
        """Part `number`, open (at most OPEN_PARTS at once), or None if it cannot be used."""
        if number in self._refused:
            return None
        part = self._open.get(number)
        if part is not None:
            self._open.move_to_end(number)
            return part
        if len(self._open) >= OPEN_PARTS:
            _, evicted = self._open.popitem(last=False)
            if self._last_read is evicted.file:
                self._last_read = None
            evicted.file.close()  # opened again if a later run needs it, and checked again
        try:
            opened = self.previous.open_part(number)
        except ReuseError as exc:
            log.warning("--reuse: %s; its documents are encoded", exc)
            self._refused.add(number)
            return None
        difference = identity_difference(opened.index.identity, self._wanted)
        missing = [name for name in self.schema.names if name not in opened.columns]
        if difference or missing:
            why = difference or f"no {', '.join(missing)} column"
            log.warning("--reuse: part %d was made otherwise (%s); encoded", number, why)
            opened.close()
            self._refused.add(number)
            return None
        part = self._open[number] = _OpenPart(opened)
        return part


def _document_rows(table: pa.Table) -> np.ndarray:
    """The first row of each document of `table` (computed rows: a document's chunks are
    numbered from 0), then its row count."""
    if "chunk" not in table.column_names:  # one row a document
        return np.arange(table.num_rows + 1, dtype=np.int64)
    chunks = table.column("chunk").to_numpy()
    return np.append(np.flatnonzero(chunks == 0), table.num_rows)


def _end(run: ReuseRun) -> int:
    return run.at + run.count


def _encoded(layout: list[pa.Table | int], documents: int) -> None:
    """`documents` more encoded documents at the end of `layout`."""
    if documents <= 0:
        return
    if layout and isinstance(layout[-1], int):
        layout[-1] += documents
    else:
        layout.append(documents)


@dataclass
class _OpenPart:
    file: PartFile
    checked: dict[int, int | None] = field(default_factory=dict)  # run -> first ordinal


def _checked(
    part: PreviousPart, run: ReuseRun, docs: Sequence[Document], keep_fields: Sequence[str]
) -> int | None:
    """The ordinal in `part` of the run's first document if the run's rows are exactly the
    rows of its documents as they are now, else None."""
    first = part.document(run.row)
    if first is None or first + run.count > len(part.ids):
        log.warning("--reuse: part %d has no document at row %d", part.number, run.row)
        return None
    if int(part.starts[first + run.count]) != run.row + run.rows:
        log.warning("--reuse: part %d rows %d+%d are not whole documents",
                    part.number, run.row, run.rows)  # fmt: skip
        return None
    for offset in range(run.count):
        doc, ordinal = docs[run.at + offset], first + offset
        same = part.ids[ordinal] == doc.id
        if not same or part.digest(ordinal) != document_digest(doc, keep_fields):
            log.warning("--reuse: part %d does not hold document %r as it is now",
                        part.number, doc.id)  # fmt: skip
            return None
    return first


class ReuseStream:
    """A shard's pieces under `--reuse`, for a compute stream: `to_compute` yields what each
    piece encodes (its copies read meanwhile, in the stream's reading thread), `merged` puts
    the copies back into each computed piece, in the same order. `reused`: documents copied
    in the pieces merged so far."""

    def __init__(self, reuse: ShardReuse, pieces: Sequence[Sequence[Document]]) -> None:
        self.reuse, self.pieces = reuse, pieces
        self.reused = 0
        self._ready: deque[ReusePiece] = deque()  # read, not merged yet

    def to_compute(self) -> Iterator[list[Document]]:
        try:
            for piece in self.reuse.pieces(self.pieces):
                self._ready.append(piece)
                yield piece.to_encode
        finally:
            self.reuse.close()

    def merged(self, encoded: pa.Table) -> pa.Table:
        piece = self._ready.popleft()
        self.reused += piece.reused
        return piece.merged(encoded)
