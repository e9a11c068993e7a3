"""From rerank input records to units of pairs: duplicates and refused units go to rejects.

A unit is what must stay in one shard: one query's candidates (ranked together, so never
split) or a single flat pair. Units get a group number at intake; the worker ranks pairs
within a group.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence

from pipeline.inputs.indexes.first_seen import FirstSeen
from pipeline.inputs.intake import IntakeCounts, RejectSink
from pipeline.inputs.pairs import PairRecord
from pipeline.inputs.validate import InputItem
from schemas.document import Reject
from schemas.pair import Pair


def pair_bytes(pair: Pair) -> int:
    """Bytes a pair takes in a shard message (ids and texts, UTF-8)."""
    return sum(len(text.encode("utf-8")) for text in pair_texts(pair))


def pair_texts(pair: Pair) -> tuple[str, str, str, str]:
    return (pair.query_id, pair.query, pair.doc_id, pair.passage)


class DuplicatePairs:
    """Policy: the first (query_id, doc_id) wins; later ones are rejected, naming the first."""

    def __init__(self, seen: FirstSeen) -> None:
        self._seen = seen

    def check(self, pair: Pair, where: str) -> str | None:
        first = self._seen.first(json.dumps([pair.query_id, pair.doc_id]), where)
        if first is None:
            return None
        return f"duplicate pair (query_id, doc_id) (first seen at {first})"


def accept_pairs(
    sources: Iterable[tuple[str, Iterable[InputItem]]],
    rejects: RejectSink,
    counts: IntakeCounts,
    *,
    check: Callable[[Sequence[Pair]], str | None] | None = None,
) -> Iterator[list[Pair]]:
    """Units of valid pairs; every pair read is counted once, as accepted or as rejected.

    `check` returns the reason to reject a whole unit (e.g. too large), or None.
    `counts` is in pairs: `documents` holds the pairs accepted.
    """
    with FirstSeen() as seen:
        duplicates = DuplicatePairs(seen)
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
                reason = check(unit) if check is not None else None
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
