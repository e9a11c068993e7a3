"""What happens after a shard fails: another attempt later, or dead-lettered for good.

The decision lives here, without Celery, so it is testable in-process; workers/tasks.py only
turns it into Celery's retry or failure.
"""

from __future__ import annotations

from pipeline.runtime.shard_runner import WorkerRuntime, fail_shard, requeue_shard
from schemas.job import ShardMessage

MAX_BACKOFF_SECONDS = 600.0


def retry_countdown(attempt: int, base: float) -> float:
    """Exponential backoff: base, 4 x base, 16 x base... at most 10 minutes."""
    return min(base * 4 ** max(attempt - 1, 0), MAX_BACKOFF_SECONDS)


def after_failure(
    runtime: WorkerRuntime, message: ShardMessage, exc: BaseException, worker: str
) -> float | None:
    """Record a transient failure: the seconds until the next attempt, or None when the
    shard has had `max_attempts` and is dead-lettered. Redis errors propagate (the caller
    hands the message back to the queue)."""
    store = runtime.store
    attempt = store.attempts(message.job_id, message.shard)
    if attempt >= runtime.max_attempts:
        fail_shard(runtime, message, f"dead-lettered after {attempt} attempts: {exc!r}", worker)
        return None
    requeue_shard(runtime, message, repr(exc), attempt)
    return retry_countdown(attempt, runtime.retry_backoff_seconds)
