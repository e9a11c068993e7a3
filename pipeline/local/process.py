"""`m3pipe encode` and `m3pipe rerank`: one input through a task's engine to an output
directory, in this process, no queue. Every record read ends as a row or a reject."""

from __future__ import annotations

import contextlib
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
from pipeline.storage.sink import part_name, write_shard
from pipeline.tasks import Reading, TaskKind
from pipeline.tasks.kind import Progress
from pipeline.tasks.reuse import ReuseSplit, merge_in_order, split_for_reuse
from producers.inputs.intake import IntakeCounts
from producers.inputs.reuse_index import ReuseIndex, open_reusable
from producers.inputs.sharding import UNBOUNDED, ShardLimits
from schemas.job import ShardState

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
) -> LocalSummary:
    """Run every valid record of `input_path` through `engine` (made by `kind`), writing
    part files, the rejects log and the manifest. `reuse`: a previous output of the same
    model and options whose rows of unchanged documents are copied, not encoded. `lease`:
    the output directory's, taken by the caller; else taken here and released at the end.
    Nothing becomes visible in the directory once another run holds its lease."""
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
        checked = check_output_dir(out_dir, overwrite, resumable=False)
        with take_lease(checked, command=kind.command) as own:
            return _write_output(
                kind, source, first, items, out_dir, engine, reading, shard_items, overwrite,
                progress, previous, own, started,
            )  # fmt: skip
    return _write_output(
        kind, source, first, items, out_dir, engine, reading, shard_items, overwrite,
        progress, previous, lease, started,
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
) -> LocalSummary:
    out = prepare_output_dir(out_dir, overwrite, resumable=False)
    summary = LocalSummary(out_dir=out, stats=kind.new_stats())
    limits = ShardLimits(items=shard_items, bytes=SHARD_MAX_BYTES, tokens=UNBOUNDED)
    item_counts = kind.counts
    keep = reading.keep_fields

    with contextlib.ExitStack() as stack:
        rejects = stack.enter_context(RejectLog(out))
        shard_log = stack.enter_context(ShardLog(out))
        index = stack.enter_context(ReuseIndex(previous)) if previous is not None else None
        sources = [(source.uri, itertools.chain([first], items))]
        shards = kind.shards(sources, engine.options, limits, rejects, summary.intake, strict=False)
        splits: deque[tuple[Sequence[Any], ReuseSplit | None]] = deque()
        to_compute = _split_shards(shards, splits, kind, engine, index, keep)
        computed = kind.compute_stream(engine, to_compute, keep, progress)
        # A part is written (zstd, pyarrow: the GIL released) while the next shard is
        # computed; at most one write waits, so at most two shards' tables are held.
        writer = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="m3pipe-write"))
        pending: tuple[Future[Location], dict[str, Any]] | None = None
        for number, (_, result) in enumerate(computed):
            shard, split = splits.popleft()
            table = result.table
            if split is not None:
                table = merge_in_order(table, split.copied, shard)
            table = kind.part_table(table, shard, keep)
            name = part_name(number)
            writing = writer.submit(write_shard, table, out / name, lease.check)
            summary.stats.add(result.stats)
            summary.parts += 1
            summary.rows += table.num_rows
            entry = {
                "shard": number,
                "state": ShardState.DONE.value,
                "name": name,
                item_counts[1]: len(shard),
                "rows": table.num_rows,
                "tokens": result.stats.tokens,
            }
            if split is not None:
                entry["reused"] = split.reused
                summary.reused = (summary.reused or 0) + split.reused
            if pending is not None:
                _log_written(shard_log, *pending)
            pending = (writing, entry)
        if pending is not None:
            _log_written(shard_log, *pending)
        if index is not None:
            summary.reused, summary.dropped = summary.reused or 0, index.dropped
    if not summary.intake.balanced():
        raise AssertionError("record accounting does not add up")  # a bug, never bad input
    lease.check()
    write_json_atomic(
        out / MANIFEST, _manifest(kind, summary, engine, source.uri, reading, started)
    )
    return summary


def _log_written(shard_log: ShardLog, writing: Future[Location], entry: dict[str, Any]) -> None:
    """The shard's log line, once its part is written (a failed write is raised here)."""
    shard_log.add({**entry, "bytes": writing.result().size()})


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


def _split_shards(
    shards: Iterator[Sequence[Any]],
    splits: deque[tuple[Sequence[Any], ReuseSplit | None]],
    kind: TaskKind,
    engine: Any,
    index: ReuseIndex | None,
    keep_fields: Sequence[str],
) -> Iterator[Sequence[Any]]:
    """What to compute of each shard: all of it, or what `--reuse` cannot copy. Runs in the
    engine's tokenizing thread, so the copies are read while the model works."""
    if index is None:
        for shard in shards:
            splits.append((shard, None))
            yield shard
        return
    schema = kind.compute(engine, [], keep_fields).table.schema  # what this run writes
    for shard in shards:
        runs = index.plan(shard, keep_fields)
        split = split_for_reuse(shard, runs, index.previous, engine, schema, keep_fields)
        splits.append((shard, split))
        yield split.to_encode


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
        "tokens": stats.tokens,
    }
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
