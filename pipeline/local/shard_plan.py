"""What `m3pipe encode` and `m3pipe rerank` compute of each shard: all of it, in pieces; what
`--reuse` cannot copy of each piece; or nothing where `--resume` finds an earlier run's part
made from exactly these items."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.inputs.indexes.reuse_index import ReuseIndex
from pipeline.jobs.resume import documents_digest, read_shard_file
from pipeline.jobs.shard_report import ShardReport
from pipeline.storage.location import Location
from pipeline.storage.sink import part_name
from pipeline.tasks import TaskKind
from pipeline.tasks.reuse import ReuseStream, ShardReuse


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


def split_shards(
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


def kept_entry(
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
