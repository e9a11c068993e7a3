"""What happens after a shard's delivery fails: the one place that maps an exception to a
verdict (drop the message, give it back to the queue, fail the shard for good, try again
later, or hand it back because job state is out of reach) and records it.

The decision lives here, without Celery, so it is testable in-process; workers/tasks.py only
turns a verdict into Celery's reject, retry or failure.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from dataclasses import dataclass

from redis.exceptions import RedisError

from pipeline.errors import PermanentError, UnknownJob, WrongWorker
from pipeline.runtime.shard_runner import fail_shard, requeue_shard
from pipeline.runtime.worker_runtime import WorkerRuntime
from schemas.job import ShardMessage

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 600.0


class Action(enum.Enum):
    DROP = "drop"  # nothing to record it against (an unknown job): never run, never retried
    GIVE_BACK = "give_back"  # another worker's shard: back to the queue, no attempt counted
    FAIL = "fail"  # failed for good (dead-lettered): the exception is raised
    RETRY = "retry"  # again after `countdown` seconds
    HAND_BACK = "hand_back"  # job state out of reach: the message goes back to the queue


@dataclass(frozen=True)
class Verdict:
    action: Action
    countdown: float = 0.0
    reason: str = ""


def decide(
    runtime: WorkerRuntime, message: ShardMessage, exc: Exception, worker: str, tenant: str
) -> Verdict:
    """What a failed delivery of `message` becomes; its state, letters and metrics are
    recorded here."""
    if isinstance(exc, UnknownJob):
        return Verdict(Action.DROP, reason=str(exc))
    if isinstance(exc, WrongWorker):
        # `status` says what the job waits for; its state is untouched.
        log.warning("shard %s of job %s given back: %s", message.shard, message.job_id, exc)
        with contextlib.suppress(RedisError):
            runtime.store.note_waiting(message.job_id, f"{exc}; last given back by {worker}")
        runtime.metrics.shard_ended("given_back", tenant)
        return Verdict(Action.GIVE_BACK, countdown=runtime.retry_backoff_seconds)
    if isinstance(exc, PermanentError):  # bad data or configuration: retrying cannot help
        runtime.metrics.shard_ended("failed", tenant)
        fail_shard(runtime, message, str(exc), worker)
        return Verdict(Action.FAIL)
    # Transient (retryable errors, lost connections, I/O): again later, a bounded number of
    # times. If even Redis is unreachable, the message goes back to the queue.
    try:
        countdown = after_failure(runtime, message, exc, worker)
    except RedisError:
        log.exception("job state unreachable; shard %s handed back", message.shard)
        return Verdict(Action.HAND_BACK, reason=f"job state unreachable: {exc!r}")
    runtime.metrics.shard_ended("failed" if countdown is None else "retried", tenant)
    if countdown is None:
        return Verdict(Action.FAIL)
    log.warning("shard %s failed (%r); retry in %.1fs", message.shard, exc, countdown)
    return Verdict(Action.RETRY, countdown=countdown)


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
