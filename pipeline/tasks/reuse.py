"""`--reuse` on the compute side: copy the planned rows of a shard from the previous output,
encode the rest, and put every row back in input order.

A copy is trusted only after it is checked here, where the documents are: the previous
part's model identity and options equal this engine's, and each copied document's id and
text digest equal the document's. A run that fails a check (the previous output changed
since submit, a forged plan, a damaged file) is encoded instead, so the output is always
what a full encode gives.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.errors import ReuseError
from pipeline.storage.finished_output import (
    FinishedOutput,
    PreviousPart,
    document_digest,
    identity,
    identity_difference,
)
from pipeline.tasks.kind import Computed, TaskEngine, TaskKind
from schemas.document import Document
from schemas.options import StorageDtype
from schemas.reuse_plan import ReuseRun
from schemas.vector_layout import upgrade_vectors

log = logging.getLogger(__name__)


@dataclass
class ReuseSplit:
    """A shard divided: the rows copied (in shard order) and the documents to encode."""

    copied: list[pa.Table]
    to_encode: list[Document]
    reused: int  # documents copied


def split_for_reuse(
    docs: Sequence[Document],
    runs: Sequence[ReuseRun],
    previous: FinishedOutput,
    engine: TaskEngine,
    schema: pa.Schema,
    keep_fields: Sequence[str] = (),
) -> ReuseSplit:
    """Read and check the planned rows; `schema` is what this job writes."""
    wanted = identity(engine.file_metadata())
    dtype = StorageDtype(str(wanted.get("dtype", StorageDtype.FLOAT16.value)))
    parts: dict[int, PreviousPart | None] = {}
    copied: list[pa.Table] = []
    reused = np.zeros(len(docs), dtype=bool)
    for run in runs:
        if run.part not in parts:
            parts[run.part] = _read_part(previous, run.part, schema, wanted)
        part = parts[run.part]
        if part is None or not _matches(part, run, docs, keep_fields):
            continue
        try:
            rows = upgrade_vectors(part.table.slice(run.row, run.rows), dtype)
            piece = rows.select(schema.names).cast(schema)
        except (pa.ArrowException, KeyError, ValueError) as exc:
            log.warning("--reuse: part %d rows of another shape (%s): encoded", run.part, exc)
            continue
        copied.append(piece)
        reused[run.at : run.at + run.count] = True
    to_encode = [doc for doc, done in zip(docs, reused, strict=True) if not done]
    return ReuseSplit(copied, to_encode, int(reused.sum()))


def _read_part(
    previous: FinishedOutput, number: int, schema: pa.Schema, wanted: dict[str, object]
) -> PreviousPart | None:
    try:
        part = previous.read_part(number, columns=schema.names)
    except ReuseError as exc:
        log.warning("--reuse: %s; its documents are encoded", exc)
        return None
    difference = identity_difference(part.identity, wanted)
    if difference:
        log.warning("--reuse: part %d was made otherwise (%s); encoded", number, difference)
        return None
    return part


def _matches(
    part: PreviousPart, run: ReuseRun, docs: Sequence[Document], keep_fields: Sequence[str]
) -> bool:
    """Whether the run's rows are exactly the rows of its documents, as they are now."""
    first = part.document(run.row)
    if first is None or first + run.count > len(part.ids):
        log.warning("--reuse: part %d has no document at row %d", part.number, run.row)
        return False
    if int(part.starts[first + run.count]) != run.row + run.rows:
        log.warning("--reuse: part %d rows %d+%d are not whole documents",
                    part.number, run.row, run.rows)  # fmt: skip
        return False
    for offset in range(run.count):
        doc, ordinal = docs[run.at + offset], first + offset
        same = part.ids[ordinal] == doc.id
        if not same or part.digest(ordinal) != document_digest(doc, keep_fields):
            log.warning("--reuse: part %d does not hold document %r as it is now",
                        part.number, doc.id)  # fmt: skip
            return False
    return True


def merge_in_order(
    encoded: pa.Table, copied: Sequence[pa.Table], docs: Sequence[Document]
) -> pa.Table:
    """Encoded and copied rows together, in the shard's document order (chunks in order)."""
    if not copied:
        return encoded
    combined = pa.concat_tables([encoded, *copied])
    position = {doc.id: index for index, doc in enumerate(docs)}
    keys = np.fromiter(
        (position[doc_id] for doc_id in combined.column("id").to_pylist()),
        dtype=np.int64,
        count=combined.num_rows,
    )
    return combined.take(pa.array(np.argsort(keys, kind="stable")))


def compute_with_reuse(
    kind: TaskKind,
    engine: TaskEngine,
    docs: Sequence[Document],
    runs: Sequence[ReuseRun],
    previous: FinishedOutput,
    keep_fields: Sequence[str] = (),
) -> tuple[Computed, int]:
    """One shard's output, its planned rows copied: (computed, documents reused)."""
    schema = kind.compute(engine, [], keep_fields).table.schema
    split = split_for_reuse(docs, runs, previous, engine, schema, keep_fields)
    computed = kind.compute(engine, split.to_encode, keep_fields)
    table = merge_in_order(computed.table, split.copied, docs)
    return Computed(table=table, stats=computed.stats, rows=table.num_rows), split.reused
