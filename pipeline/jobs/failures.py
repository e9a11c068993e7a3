"""Why a job's shards failed: the most common reasons, with counts, for `status` and `wait`.

Read from the failed shards' infos, a batch at a time; memory is bounded by the number of
distinct reasons kept, not by the failed shards (a job may have a million).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

from pipeline.jobs.store import JobStore
from schemas.job import ShardState

_BATCH = 1000
_DISTINCT_KEPT = 100  # reasons counted; a job with more distinct ones counts the rest apart
_REASON_CHARS = 300


@dataclass(frozen=True)
class FailureReason:
    reason: str
    shards: int


def failure_reasons(store: JobStore, job_id: str, shown: int = 3) -> list[FailureReason]:
    """The `shown` most common reasons its failed shards give, most common first."""
    counts: Counter[str] = Counter()
    failed = store.shards_in_state(job_id, ShardState.FAILED)
    while batch := list(itertools.islice(failed, _BATCH)):
        for info in store.infos_of(job_id, batch).values():
            reason = str(info.get("error") or "no reason recorded")[:_REASON_CHARS]
            if reason in counts or len(counts) < _DISTINCT_KEPT:
                counts[reason] += 1
            else:
                counts["(other reasons)"] += 1
    return [FailureReason(reason, shards) for reason, shards in counts.most_common(shown)]


def describe_failures(reasons: list[FailureReason]) -> list[str]:
    """One line per reason, as `status` and `wait` print them."""
    return [f"  {item.shards:>6} shard(s): {item.reason}" for item in reasons]
