"""`m3pipe encode` and `m3pipe rerank`: one input through a task's engine to an output
directory, in this process, no queue. Every record read ends as a row or a reject.
What is computed of each shard: pipeline/local/shard_plan.py; the summary and the manifest:
pipeline/local/summary.py."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.engine.stats import BatchStats
from pipeline.errors import InputError, ReuseError
from pipeline.inputs.indexes.reuse_index import ReuseIndex, open_reusable
from pipeline.inputs.sharding import UNBOUNDED, ShardLimits
from pipeline.jobs.resume import shard_footer
from pipeline.jobs.shard_report import ShardReport
from pipeline.local.shard_plan import Planned, kept_entry, split_shards
from pipeline.local.summary import LocalSummary, local_manifest
from pipeline.storage.finished_output import (
    FinishedOutput,
    identity,
    identity_difference,
)
from pipeline.storage.location import Location, open_location
from pipeline.storage.output_dir import (
    MANIFEST,
    RejectLog,
    ShardLog,
    check_output_dir,
    prepare_output_dir,
    write_json_atomic,
)
from pipeline.storage.output_lease import OutputLease, take_lease
from pipeline.storage.part_writer import PartWriter
from pipeline.storage.sink import part_name
from pipeline.tasks import Reading, TaskKind
from pipeline.tasks.kind import Progress
from producers.resume import remove_parts_from

# A shard's texts are held in memory with its output; bound them by bytes too. A larger
# unit (one huge document, one query's many candidates) forms a shard of its own.
SHARD_MAX_BYTES = 8_000_000


def process_file(
    kind: TaskKind,
    input_path: Location | Path | str,
    out_dir: Location | Path | str,
    engine: Any,
    *,
    reading: Reading | None = None,
    shard_items: int = 1000,
    overwrite: bool = False,
    progress: Progress | None = None,
    reuse: Location | Path | str | None = None,
    lease: OutputLease | None = None,
    resume: bool = False,
    piece_documents: int = 128,
    direct_writes: bool = True,
) -> LocalSummary:
    """Run every valid record of `input_path` through `engine` (made by `kind`), writing
    part files, the rejects log and the manifest. `reuse`: a previous output of the same
    model and options whose rows of unchanged documents are copied, not encoded. `lease`:
    the output directory's, taken by the caller; else taken here and released at the end.
    Nothing becomes visible in the directory once another run holds its lease. `resume`:
    the part files of an interrupted run into `out_dir` whose items still match (their
    digest, in each part's footer) are kept; the others are computed again.
    `piece_documents`: of a shard, computed and written at a time. `direct_writes`: local
    parts around the page cache (pipeline/storage/direct_file.py)."""
    started = time.time()
    reading = reading or Reading()
    source = open_location(input_path)
    items = kind.read(source, kind.detect_format(source, reading.input_format), reading)
    first = next(items, None)
    if first is None:
        raise InputError(f"{input_path} holds no records (empty file)")
    previous = None
    if reuse is not None:
        if not kind.reusable:
            raise ReuseError(f"--reuse does not apply to `m3pipe {kind.command}`")
        previous = check_reusable(reuse, out_dir, engine, reading)
    if lease is None:
        checked = check_output_dir(out_dir, overwrite, resume)
        with take_lease(checked, command=kind.command) as own:
            return _write_output(
                kind, source, first, items, out_dir, engine, reading, shard_items, overwrite,
                progress, previous, own, started, resume, piece_documents, direct_writes,
            )  # fmt: skip
    return _write_output(
        kind, source, first, items, out_dir, engine, reading, shard_items, overwrite,
        progress, previous, lease, started, resume, piece_documents, direct_writes,
    )  # fmt: skip


def _write_output(
    kind: TaskKind,
    source: Location,
    first: Any,
    items: Iterator[Any],
    out_dir: Location | Path | str,
    engine: Any,
    reading: Reading,
    shard_items: int,
    overwrite: bool,
    progress: Progress | None,
    previous: FinishedOutput | None,
    lease: OutputLease,
    started: float,
    resume: bool,
    piece_documents: int,
    direct_writes: bool,
) -> LocalSummary:
    out = prepare_output_dir(out_dir, overwrite, resume)
    summary = LocalSummary(out_dir=out, stats=kind.new_stats(), resumed=0 if resume else None)
    limits = ShardLimits(items=shard_items, bytes=SHARD_MAX_BYTES, tokens=UNBOUNDED)
    item_counts = kind.counts
    keep = reading.keep_fields

    with contextlib.ExitStack() as stack:
        rejects = stack.enter_context(RejectLog(out))
        shard_log = stack.enter_context(ShardLog(out))
        index = stack.enter_context(ReuseIndex(previous)) if previous is not None else None
        sources = [(source.uri, itertools.chain([first], items))]
        shards = kind.shards(sources, engine.options, limits, rejects, summary.intake, strict=False)
        splits: deque[Planned] = deque()
        kept_from = out if resume else None
        to_compute = split_shards(
            shards, splits, kind, engine, index, keep, kept_from, piece_documents
        )
        computed = stack.enter_context(
            contextlib.closing(kind.compute_stream(engine, to_compute, keep, progress))
        )
        # A shard's part is written piece by piece (pipeline/storage/part_writer.py) while
        # the next piece computes, and finished (footer, fsync, rename) in `finisher` while
        # the next shard computes; at most one part waits to be finished.
        finisher = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="m3pipe-write"))
        pending: tuple[Future[Location], ShardReport, int, str] | None = None
        number = -1
        part: _OpenPart | None = None  # the shard whose pieces are being written
        try:
            for _, result in computed:
                if part is None:
                    planned = splits.popleft()
                    number += 1
                    if planned.kept is not None:  # --resume: an earlier run's part of these
                        if pending is not None:
                            _log_written(shard_log, *pending)
                            pending = None
                        name = part_name(number)
                        shard_log.add(kept_entry(planned.kept, number, name, item_counts[1], out))
                        summary.parts += 1
                        summary.rows += int(planned.kept["rows"])
                        summary.resumed = (summary.resumed or 0) + len(planned.shard)
                        summary.resumed_tokens += int(planned.kept["tokens"])
                        continue
                    part = _OpenPart(planned, kind.new_stats())
                part.stats.add(result.stats)
                table = result.table
                if part.planned.reuse is not None:  # --reuse: the piece's copied rows put in
                    table = part.planned.reuse.merged(table)
                if part.writer is None:  # the schema, with what the kind records of the shard
                    schema = kind.part_table(table, part.planned.shard, keep).schema
                    part.writer = PartWriter(
                        out / part_name(number), schema, lease.check, direct_writes=direct_writes
                    )
                part.writer.write(table)
                part.rows += table.num_rows
                part.pieces_left -= 1
                if part.pieces_left > 0:
                    continue
                planned, stats, rows = part.planned, part.stats, part.rows
                facts = {  # in the part's footer: what --resume checks
                    "shard": number,
                    "digest": planned.digest,
                    "documents": len(planned.shard),
                    "rows": rows,
                    "tokens": stats.tokens,
                }
                writing = finisher.submit(part.writer.close, shard_footer(facts))
                part = None
                summary.stats.add(stats)
                summary.parts += 1
                summary.rows += rows
                reuse = planned.reuse
                report = ShardReport(  # its bytes once written
                    documents=len(planned.shard),
                    rows=rows,
                    tokens=stats.tokens,
                    part_bytes=0,
                    reused=reuse.reused if reuse is not None else None,
                )
                if reuse is not None:
                    summary.reused = (summary.reused or 0) + reuse.reused
                if pending is not None:
                    _log_written(shard_log, *pending)
                pending = (writing, report, number, item_counts[1])
        except BaseException:
            if part is not None and part.writer is not None:
                part.writer.abort()  # its temp file goes; nothing appears
            raise
        if pending is not None:
            _log_written(shard_log, *pending)
        if resume:
            remove_parts_from(out, number + 1)  # an earlier run's parts past the last shard
        if index is not None:
            summary.reused, summary.dropped = summary.reused or 0, index.dropped
    if not summary.intake.balanced():
        raise AssertionError("record accounting does not add up")  # a bug, never bad input
    lease.check()
    write_json_atomic(
        out / MANIFEST, local_manifest(kind, summary, engine, source.uri, reading, started)
    )
    return summary


def _log_written(
    shard_log: ShardLog, writing: Future[Location], report: ShardReport, shard: int, items: str
) -> None:
    """The shard's log line, once its part is written (a failed write is raised here)."""
    written = writing.result()
    report = dataclasses.replace(report, part_bytes=written.size())
    shard_log.add(report.log_entry(shard, written.name, items))


def check_reusable(
    reuse: Location | Path | str, out_dir: Location | Path | str, engine: Any, reading: Reading
) -> FinishedOutput:
    """The previous output, once it is sure its rows are what this run would write: the
    checks a producer makes, then the loaded model's whole identity."""
    previous = open_reusable(reuse, out_dir, engine.model.spec, engine.options, reading.keep_fields)
    difference = identity_difference(previous.identity, identity(engine.file_metadata()))
    if difference:
        raise ReuseError(f"--reuse {previous.location} was made otherwise: {difference}")
    return previous


@dataclass
class _OpenPart:
    """A shard whose pieces are being computed and written."""

    planned: Planned
    stats: BatchStats
    writer: PartWriter | None = None
    rows: int = 0
    pieces_left: int = field(init=False)

    def __post_init__(self) -> None:
        self.pieces_left = self.planned.pieces
