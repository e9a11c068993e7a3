"""From rerank input records to shards of pairs: duplicates and oversize go to rejects.

A unit is what must stay in one shard: one query's candidates (ranked together, so never
split) or a single flat pair. Units get a group number at intake; the worker ranks pairs
within a group.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from producers.intake import IntakeCounts, RejectSink
from producers.pairs import PairRecord
from producers.sharding import cut_unit_shards
from producers.validate import InputItem
from schemas.document import Reject
from schemas.rerank import Pair, RerankOptions

SPECIALS = 4  # <s> query </s></s> passage </s>


def pair_bytes(pair: Pair) -> int:
    """Bytes a pair takes in a shard message (ids and texts, UTF-8)."""
    return sum(len(text.encode("utf-8")) for text in pair_texts(pair))


def pair_texts(pair: Pair) -> tuple[str, str, str, str]:
    return (pair.query_id, pair.query, pair.doc_id, pair.passage)


def worst_case_pair_tokens(pair: Pair, options: RerankOptions) -> int:
    """Tokens a pair can cost at most: a token covers at least one byte of text."""
    text = len(pair.query.encode("utf-8")) + len(pair.passage.encode("utf-8"))
    return min(text + SPECIALS, options.max_length)


@dataclass(frozen=True)
class PairLimits:
    """What one shard may hold: pairs, message bytes, worst-case tokens."""

    pairs: int
    bytes: int
    tokens: int


class DuplicatePairs:
    """Policy: the first (query_id, doc_id) wins; later ones are rejected, naming the first."""

    def __init__(self) -> None:
        self._first_seen: dict[tuple[str, str], str] = {}

    def check(self, pair: Pair, where: str) -> str | None:
        key = (pair.query_id, pair.doc_id)
        first = self._first_seen.get(key)
        if first is None:
            self._first_seen[key] = where
            return None
        return f"duplicate pair (query_id, doc_id) (first seen at {first})"


def accept_pairs(
    sources: Iterable[tuple[str, Iterable[InputItem]]],
    rejects: RejectSink,
    counts: IntakeCounts,
    limits: PairLimits,
    options: RerankOptions,
) -> Iterator[list[Pair]]:
    """Units of valid pairs; every pair read is counted once, as accepted or as rejected.

    `counts` is in pairs: `documents` holds the pairs accepted.
    """
    duplicates = DuplicatePairs()
    group = 0
    for source, items in sources:
        for item in items:
            record = item.result
            if not isinstance(record, PairRecord):  # a record that held no pair at all
                counts.input_records += 1
                counts.rejected += 1
                rejects.add(record)
                continue
            counts.input_records += len(record.pairs) + len(record.rejects)
            for reject in record.rejects:
                rejects.add(reject)
                counts.rejected += 1
            where = f"{item.file or source} {item.where}"
            unit: list[Pair] = []
            for pair in record.pairs:
                reason = duplicates.check(pair, where)
                if reason is None:
                    unit.append(pair)
                else:
                    rejects.add(_reject(item, source, pair, reason))
                    counts.rejected += 1
            if not unit:
                continue
            if record.grouped:
                unit = [pair.model_copy(update={"group": group}) for pair in unit]
                group += 1
            reason = oversize_reason(unit, limits, options)
            if reason is not None:
                for pair in unit:
                    rejects.add(_reject(item, source, pair, reason))
                counts.rejected += len(unit)
                continue
            counts.documents += len(unit)
            yield unit


def _reject(item: InputItem, source: str, pair: Pair, reason: str) -> Reject:
    return Reject(
        source=item.file or source,
        line=item.line,
        row=item.row,
        id=pair.doc_id,
        query_id=pair.query_id,
        reason=reason,
    )


def oversize_reason(unit: Sequence[Pair], limits: PairLimits, options: RerankOptions) -> str | None:
    """Why a unit cannot go in any shard, or None."""
    what = "the query's candidates take" if len(unit) > 1 else "the pair takes"
    nbytes = sum(pair_bytes(pair) for pair in unit)
    if nbytes > limits.bytes:
        return (
            f"{what} {nbytes:,} bytes, above the {limits.bytes:,}-byte message limit "
            "(a query's candidates are never split: send fewer per query, or raise "
            "--shard-bytes)"
        )
    tokens = sum(worst_case_pair_tokens(pair, options) for pair in unit)
    if tokens > limits.tokens:
        return (
            f"{what} up to {tokens:,} tokens, more than one shard may hold "
            f"({limits.tokens:,}) within the visibility timeout"
        )
    return None


def cut_pair_shards(
    units: Iterable[Sequence[Pair]], limits: PairLimits, options: RerankOptions
) -> Iterator[list[Pair]]:
    """Shards of whole units, bounded by pairs, message bytes and worst-case tokens."""

    def share(unit: Sequence[Pair]) -> int:
        # One size for the cutter: the larger of each limit's share, in millionths.
        nbytes = sum(pair_bytes(pair) for pair in unit)
        tokens = sum(worst_case_pair_tokens(pair, options) for pair in unit)
        return max(
            math.ceil(nbytes * 1_000_000 / limits.bytes),
            math.ceil(tokens * 1_000_000 / limits.tokens),
        )

    return cut_unit_shards(units, limits.pairs, 1_000_000, share)
