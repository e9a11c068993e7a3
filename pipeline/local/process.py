"""`m3pipe encode` and `m3pipe rerank`: one input through a task's engine to an output
directory, in this process, no queue. Every record read ends as a row or a reject."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.engine.stats import BatchStats
from pipeline.errors import InputError, ReuseError
from pipeline.inputs.indexes.reuse_index import ReuseIndex, open_reusable
from pipeline.inputs.intake import IntakeCounts
from pipeline.inputs.sharding import UNBOUNDED, ShardLimits
from pipeline.jobs.resume import documents_digest, read_shard_file, shard_footer
from pipeline.jobs.shard_report import ShardReport
from pipeline.storage.finished_output import (
    FinishedOutput,
    identity,
    identity_difference,
)
from pipeline.storage.location import Location, open_location
from pipeline.storage.manifest import build_manifest
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
from pipeline.tasks.reuse import ReuseStream, ShardReuse
from producers.resume import remove_parts_from

# A shard's texts are held in memory with its output; bound them by bytes too. A larger
# unit (one huge document, one query's many candidates) forms a shard of its own.
SHARD_MAX_BYTES = 8_000_000


@dataclass
class LocalSummary:
    out_dir: Location
    stats: BatchStats
    intake: IntakeCounts = field(default_factory=IntakeCounts)  # in the task's items
    parts: int = 0
    rows: int = 0
    reused: int | None = None  # with --reuse: documents copied from the previous output
    dropped: int | None = None  # ... and its documents no longer in the input
    resumed: int | None = None  # with --resume: items whose part an earlier run wrote
    resumed_tokens: int = 0  # ... and their tokens

    @property
    def input_records(self) -> int:
        return self.intake.input_records

    @property
    def accepted(self) -> int:
        return self.intake.documents

    @property
    def rejected(self) -> int:
        return self.intake.rejected


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
        to_compute = _split_shards(
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
                        shard_log.add(_kept_entry(planned.kept, number, name, item_counts[1], out))
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
        out / MANIFEST, _manifest(kind, summary, engine, source.uri, reading, started)
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
class Planned:
    """A shard as planned: its items and their digest, its pieces with what `--reuse` copies
    of them, and with `--resume` the footer facts of an earlier run's part of exactly these
    items."""

    shard: Sequence[Any]
    digest: str
    reuse: ReuseStream | None = None
    kept: dict[str, Any] | None = None
    pieces: int = 1  # what is computed of it comes in this many pieces


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


def _split_shards(
    shards: Iterator[Sequence[Any]],
    splits: deque[Planned],
    kind: TaskKind,
    engine: Any,
    index: ReuseIndex | None,
    keep_fields: Sequence[str],
    kept_from: Location | None = None,
    piece_documents: int = 128,
) -> Iterator[Sequence[Any]]:
    """What to compute of each shard, in pieces of about `piece_documents` items: all of
    it, what `--reuse` cannot copy of each piece (merged with the piece's copies), or
    nothing when `kept_from` (--resume) holds its part already. Runs in the engine's
    tokenizing thread, so copies and part footers are read while the model works."""
    schema = kind.compute(engine, [], keep_fields).table.schema if index is not None else None
    for number, shard in enumerate(shards):
        planned = Planned(shard, documents_digest(shard))
        if kept_from is not None:
            planned.kept = _kept_part(kept_from / part_name(number), planned)
        if planned.kept is not None:
            splits.append(planned)
            yield []  # nothing to compute: the part stays
            continue
        pieces = kind.pieces(shard, piece_documents) or [shard]
        planned.pieces = len(pieces)
        if index is not None and schema is not None:
            runs = index.plan(shard, keep_fields)
            reuse = ShardReuse(shard, runs, index.previous, engine, schema, keep_fields)
            planned.reuse = ReuseStream(reuse, pieces)
            splits.append(planned)
            yield from planned.reuse.to_compute()
            continue
        splits.append(planned)
        yield from pieces


def _kept_part(path: Location, planned: Planned) -> dict[str, Any] | None:
    """The facts of the part at `path` if an earlier run wrote it from these very items."""
    found = read_shard_file(path)
    if found is None:
        return None
    facts = found.facts
    if facts.get("digest") != planned.digest or facts.get("documents") != len(planned.shard):
        return None
    if not isinstance(facts.get("rows"), int) or not isinstance(facts.get("tokens"), int):
        return None
    return facts


def _kept_entry(
    facts: dict[str, Any], number: int, name: str, items: str, out: Location
) -> dict[str, Any]:
    """The shard-log line of a part kept by --resume."""
    report = ShardReport(
        documents=int(facts["documents"]),
        rows=int(facts["rows"]),
        tokens=int(facts["tokens"]),
        part_bytes=(out / name).size(),
    )
    return {**report.log_entry(number, name, items), "resumed": True}


def _manifest(
    kind: TaskKind,
    summary: LocalSummary,
    engine: Any,
    source: str,
    reading: Reading,
    started: float,
) -> dict[str, object]:
    stats = summary.stats
    read, accepted = kind.counts
    counts = {
        read: summary.input_records,
        accepted: summary.accepted,
        "rows": summary.rows,
        "rejected": summary.rejected,
        "tokens": stats.tokens + summary.resumed_tokens,
    }
    if summary.resumed is not None:
        counts["resumed"] = summary.resumed
    if summary.reused is not None:
        counts |= {
            "reused": summary.reused,
            "encoded": summary.accepted - summary.reused,
            "dropped": summary.dropped or 0,
        }
    return build_manifest(
        job={
            "command": kind.command,
            "inputs": [source],
            **kind.manifest_job(reading, engine),
            "batch_tokens": engine.batch_tokens,
        },
        model=engine.file_metadata(),
        parts=summary.parts,
        counts=counts,
        stats={
            **kind.manifest_stats(stats),
            "wall_seconds": round(time.time() - started, 3),
            "padding_efficiency": round(stats.padding_efficiency, 4),
            "batches": stats.batches,
        },
    )
