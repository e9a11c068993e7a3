"""`m3pipe rerank`: one file of (query, passage) pairs scored to an output directory, no queue."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.engine.reranker import RerankEngine, RerankStats
from pipeline.errors import InputError
from pipeline.storage.location import Location, open_location
from pipeline.storage.manifest import build_manifest
from pipeline.storage.output_dir import MANIFEST, RejectLog, prepare_output_dir, write_json_atomic
from pipeline.storage.sink import part_name, write_shard
from producers.intake import IntakeCounts
from producers.lines import DEFAULT_MAX_RECORD_BYTES
from producers.pair_intake import PairLimits, accept_pairs, cut_pair_shards
from producers.readers import read_pair_records

# A shard's texts are held in memory while it is scored; bound them by bytes too. A query's
# candidates always stay in one shard, so a larger candidates list makes a larger shard.
SHARD_MAX_BYTES = 8_000_000
UNBOUNDED_TOKENS = 2**62  # no visibility timeout without a queue

Progress = Callable[[int, int], None]  # (pairs done in this shard, tokens)


@dataclass
class RerankSummary:
    out_dir: Location
    intake: IntakeCounts = field(default_factory=IntakeCounts)  # in pairs
    files: list[dict[str, object]] = field(default_factory=list)
    stats: RerankStats = field(default_factory=RerankStats)

    @property
    def rejected(self) -> int:
        return self.intake.rejected


def rerank_file(
    input_path: Location | Path | str,
    out_dir: Location | Path | str,
    engine: RerankEngine,
    *,
    input_format: str = "auto",
    shard_pairs: int = 1000,
    overwrite: bool = False,
    progress: Progress | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> RerankSummary:
    """Score every valid pair of `input_path`; every pair read ends as a row or a reject."""
    started = time.time()
    source = open_location(input_path)
    items = read_pair_records(source, input_format, max_record_bytes)
    first = next(items, None)
    if first is None:
        raise InputError(f"{input_path} holds no records (empty file)")
    out = prepare_output_dir(out_dir, overwrite, resumable=False)
    summary = RerankSummary(out_dir=out)
    limits = PairLimits(pairs=shard_pairs, bytes=SHARD_MAX_BYTES, tokens=UNBOUNDED_TOKENS)

    with RejectLog(out) as rejects:
        sources = [(source.uri, itertools.chain([first], items))]
        units = accept_pairs(sources, rejects, summary.intake, limits, engine.options)
        for index, shard in enumerate(cut_pair_shards(units, limits, engine.options)):
            scored = engine.score(shard)
            name = part_name(index)
            written = write_shard(scored.table, out / name)
            summary.stats.add(scored.stats)
            summary.files.append(
                {
                    "name": name,
                    "pairs": len(shard),
                    "rows": scored.table.num_rows,
                    "tokens": scored.stats.tokens,
                    "bytes": written.size(),
                }
            )
            if progress is not None:
                progress(len(shard), scored.stats.tokens)
    if not summary.intake.balanced():
        raise AssertionError("pair accounting does not add up")  # a bug, never bad input
    write_json_atomic(out / MANIFEST, _manifest(summary, engine, source.uri, started))
    return summary


def _manifest(
    summary: RerankSummary, engine: RerankEngine, source: str, started: float
) -> dict[str, object]:
    stats = summary.stats
    return build_manifest(
        job={
            "command": "rerank",
            "task": "rerank",
            "inputs": [source],
            "rerank": engine.options.model_dump(mode="json"),
            "batch_tokens": engine.batch_tokens,
        },
        model=engine.file_metadata(),
        files=summary.files,
        counts={
            "input_pairs": summary.intake.input_records,
            "pairs": summary.intake.documents,
            "rows": stats.rows,
            "rejected": summary.rejected,
            "tokens": stats.tokens,
        },
        stats={
            "score_seconds": round(stats.seconds, 3),
            "wall_seconds": round(time.time() - started, 3),
            "pairs_per_second": round(stats.pairs_per_second, 1),
            "padding_efficiency": round(stats.padding_efficiency, 4),
            "batches": stats.batches,
        },
    )
