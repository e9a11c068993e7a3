"""A shard's part computed piece by piece and written while the next piece computes, and
(`--reuse`) the pieces with the rows copied from a previous output put in."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.engine.stats import BatchStats
from pipeline.jobs.resume import shard_footer
from pipeline.runtime.worker_runtime import WorkerRuntime
from pipeline.storage.finished_output import FinishedOutput
from pipeline.storage.location import Location
from pipeline.storage.output_roots import allowed_reuse
from pipeline.storage.part_writer import PartWriter
from pipeline.tasks import TaskEngine
from pipeline.tasks.kind import TaskKind
from pipeline.tasks.reuse import ReuseStream, ShardReuse
from schemas.job import JobSpec, ShardMessage

if TYPE_CHECKING:
    import pyarrow as pa


def reuse_stream(
    message: ShardMessage,
    spec: JobSpec,
    runtime: WorkerRuntime,
    kind: TaskKind,
    engine: TaskEngine,
    items: Sequence[Any],
    pieces: Sequence[Sequence[Any]],
) -> ReuseStream:
    """The shard's pieces with their planned rows copied from the previous output."""
    assert message.reuse is not None and spec.reuse is not None
    location = allowed_reuse(spec.reuse, runtime.input_roots, runtime.output_roots)
    schema = kind.compute(engine, [], spec.keep_fields).table.schema
    reuse = ShardReuse(items, message.reuse, FinishedOutput.at(location), engine, schema,
                       spec.keep_fields)  # fmt: skip
    return ReuseStream(reuse, pieces)


def stream_part(
    kind: TaskKind,
    engine: TaskEngine,
    items: Sequence[Any],
    pieces: Iterable[Sequence[Any]],
    spec: JobSpec,
    target: Location,
    fence: Callable[[], None],
    facts: Callable[[BatchStats, int], dict[str, Any]],
    direct_writes: bool = True,
    merge: Callable[[pa.Table], pa.Table] | None = None,
) -> tuple[BatchStats, int, Location]:
    """Compute the shard piece by piece and write each piece while the next one computes
    (the engine tokenizes the next piece meanwhile): the device never waits for the write.
    `merge` completes a computed piece (`--reuse`: its copied rows put in).
    Exactly-once is as before: the part appears, whole, only at `close`, after the fence."""
    stats, rows = kind.new_stats(), 0
    writer: PartWriter | None = None
    try:
        with contextlib.closing(kind.compute_stream(engine, pieces, spec.keep_fields)) as stream:
            for _, computed in stream:  # (closed on an error: the engine lets the device go)
                table = computed.table if merge is None else merge(computed.table)
                if writer is None:  # the schema, with what the kind records of all the items
                    schema = kind.part_table(table, items, spec.keep_fields).schema
                    writer = PartWriter(target, schema, fence, direct_writes=direct_writes)
                writer.write(table)
                stats.add(computed.stats)
                rows += table.num_rows
        if writer is None:  # nothing to compute: an empty part
            empty = kind.compute(engine, [], spec.keep_fields).table
            writer = PartWriter(
                target,
                kind.part_table(empty, items, spec.keep_fields).schema,
                fence,
                direct_writes=direct_writes,
            )
        return stats, rows, writer.close(shard_footer(facts(stats, rows)))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
