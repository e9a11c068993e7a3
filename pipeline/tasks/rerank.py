"""Reranking: (query, passage) pairs in, one cross-encoder score per pair out.

A unit is what must stay in one shard: one query's candidates (ranked together, so never
split) or a single flat pair.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.inputs.intake import IntakeCounts, RejectSink
from pipeline.inputs.pair_intake import accept_pairs, pair_bytes
from pipeline.inputs.readers.formats import detect_pair_format, read_pair_records
from pipeline.inputs.sharding import ShardLimits, UnitSize, cut_sized_shards, over_limit
from pipeline.inputs.validate import InputItem
from pipeline.tasks.kind import Check, Computed, Reading, TaskKind
from schemas.job import JobSpec, Task
from schemas.pair import Pair, RerankOptions

if TYPE_CHECKING:
    from pipeline.engine.reranker import RerankEngine, RerankModel, RerankStats
    from pipeline.storage.location import Location

SPECIALS = 4  # <s> query </s></s> passage </s>


def worst_case_pair_tokens(pair: Pair, options: RerankOptions) -> int:
    """Tokens a pair can cost at most: a token covers at least one byte of text."""
    text = len(pair.query.encode("utf-8")) + len(pair.passage.encode("utf-8"))
    return min(text + SPECIALS, options.max_length)


def unit_size(unit: Sequence[Pair], options: RerankOptions) -> UnitSize:
    return UnitSize(
        sum(pair_bytes(pair) for pair in unit),
        sum(worst_case_pair_tokens(pair, options) for pair in unit),
    )


def oversize_reason(
    unit: Sequence[Pair],
    limits: ShardLimits,
    options: RerankOptions,
    size: UnitSize | None = None,
) -> str | None:
    """Why a unit cannot go in any shard, or None; `size`: its unit_size."""
    what = "the query's candidates take" if len(unit) > 1 else "the pair takes"
    size = size or unit_size(unit, options)
    over = over_limit(size, limits)
    if over == "bytes":
        return (
            f"{what} {size.bytes:,} bytes, above the {limits.bytes:,}-byte message limit "
            "(a query's candidates are never split: send fewer per query, or raise "
            "--shard-bytes)"
        )
    if over == "tokens":
        return (
            f"{what} up to {size.tokens:,} tokens, more than one shard may hold "
            f"({limits.tokens:,}) within the visibility timeout"
        )
    return None


def cut_pair_shards(
    units: Iterable[Sequence[Pair]], limits: ShardLimits, options: RerankOptions
) -> Iterator[list[Pair]]:
    """Shards of whole units, bounded by pairs, message bytes and worst-case tokens."""
    return cut_sized_shards(units, limits, lambda unit: unit_size(unit, options))


class RerankTask(TaskKind):
    task = Task.RERANK
    command = "rerank"
    model_setting = "rerank_model"
    seconds_name = "score_seconds"
    rate_name = "pairs_per_second"

    def detect_format(self, location: Location | Path | str, requested: str = "auto") -> str:
        return detect_pair_format(location, requested)

    def read(self, location: Location, fmt: str, reading: Reading) -> Iterator[InputItem]:
        return read_pair_records(location, fmt, reading.max_record_bytes)

    def accept(
        self,
        sources: Iterable[tuple[str, Iterable[InputItem]]],
        rejects: RejectSink,
        counts: IntakeCounts,
        check: Check | None,
    ) -> Iterator[list[Pair]]:
        return accept_pairs(sources, rejects, counts, check=check)

    def unit_size(self, unit: Sequence[Pair], options: RerankOptions) -> UnitSize:
        return unit_size(unit, options)

    def oversize_reason(
        self,
        unit: Sequence[Pair],
        limits: ShardLimits,
        options: RerankOptions,
        size: UnitSize | None = None,
    ) -> str | None:
        return oversize_reason(unit, limits, options, size)

    def model_loader(self) -> Callable[..., RerankModel]:
        from pipeline.engine.reranker import load_reranker

        return load_reranker

    def job_options(self, spec: JobSpec) -> Hashable:
        assert spec.rerank is not None  # JobSpec validates it
        return spec.rerank

    def engine(self, model: RerankModel, options: RerankOptions) -> RerankEngine:
        from pipeline.engine.reranker import RerankEngine

        return RerankEngine(model, options)

    def compute(
        self, engine: RerankEngine, items: Sequence[Pair], keep_fields: Sequence[str] = ()
    ) -> Computed:
        scored = engine.score(items)
        return Computed(table=scored.table, stats=scored.stats, rows=scored.table.num_rows)

    def new_stats(self) -> RerankStats:
        from pipeline.engine.reranker import RerankStats

        return RerankStats()

    def manifest_job(self, reading: Reading, engine: RerankEngine) -> dict[str, object]:
        return {"task": "rerank", "rerank": engine.options.model_dump(mode="json")}
