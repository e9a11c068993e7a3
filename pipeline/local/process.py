"""`m3pipe encode` and `m3pipe rerank`: one input through a task's engine to an output
directory, in this process, no queue. Every record read ends as a row or a reject."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.engine.stats import BatchStats
from pipeline.errors import InputError
from pipeline.storage.location import Location, open_location
from pipeline.storage.manifest import build_manifest
from pipeline.storage.output_dir import (
    MANIFEST,
    RejectLog,
    ShardLog,
    prepare_output_dir,
    write_json_atomic,
)
from pipeline.storage.sink import part_name, write_shard
from pipeline.tasks import Reading, TaskKind
from pipeline.tasks.kind import Progress
from producers.inputs.intake import IntakeCounts
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
) -> LocalSummary:
    """Run every valid record of `input_path` through `engine` (made by `kind`), writing
    part files, the rejects log and the manifest."""
    started = time.time()
    reading = reading or Reading()
    source = open_location(input_path)
    items = kind.read(source, kind.detect_format(source, reading.input_format), reading)
    first = next(items, None)
    if first is None:
        raise InputError(f"{input_path} holds no records (empty file)")
    out = prepare_output_dir(out_dir, overwrite, resumable=False)
    summary = LocalSummary(out_dir=out, stats=kind.new_stats())
    limits = ShardLimits(items=shard_items, bytes=SHARD_MAX_BYTES, tokens=UNBOUNDED)
    item_counts = kind.counts

    with RejectLog(out) as rejects, ShardLog(out) as shard_log:
        sources = [(source.uri, itertools.chain([first], items))]
        shards = kind.shards(sources, engine.options, limits, rejects, summary.intake, strict=False)
        computed = kind.compute_stream(engine, shards, reading.keep_fields, progress)
        for index, (shard, result) in enumerate(computed):
            name = part_name(index)
            written = write_shard(result.table, out / name)
            summary.stats.add(result.stats)
            summary.parts += 1
            summary.rows += result.rows
            shard_log.add(
                {
                    "shard": index,
                    "state": ShardState.DONE.value,
                    "name": name,
                    item_counts[1]: len(shard),
                    "rows": result.rows,
                    "tokens": result.stats.tokens,
                    "bytes": written.size(),
                }
            )
    if not summary.intake.balanced():
        raise AssertionError("record accounting does not add up")  # a bug, never bad input
    write_json_atomic(
        out / MANIFEST, _manifest(kind, summary, engine, source.uri, reading, started)
    )
    return summary


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
    return build_manifest(
        job={
            "command": kind.command,
            "inputs": [source],
            **kind.manifest_job(reading, engine),
            "batch_tokens": engine.batch_tokens,
        },
        model=engine.file_metadata(),
        parts=summary.parts,
        counts={
            read: summary.input_records,
            accepted: summary.accepted,
            "rows": summary.rows,
            "rejected": summary.rejected,
            "tokens": stats.tokens,
        },
        stats={
            **kind.manifest_stats(stats),
            "wall_seconds": round(time.time() - started, 3),
            "padding_efficiency": round(stats.padding_efficiency, 4),
            "batches": stats.batches,
        },
    )
