"""Task definitions. The body reads like a checklist; the work is in
pipeline.runtime.shard_runner."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject
from pydantic import ValidationError
from redis.exceptions import RedisError

from pipeline.errors import PermanentError, UnknownJob, WrongWorker
from pipeline.jobs.keys import TASK_ENCODE_SHARD
from pipeline.runtime.retry_policy import after_failure
from pipeline.runtime.shard_runner import WorkerRuntime, fail_shard, run_shard
from schemas.job import ShardMessage, ShardState
from workers import bootstrap
from workers.app import app

log = logging.getLogger(__name__)


def parse_message(task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ShardMessage:
    """The validated shard message, or Reject (dropped, never run) with the reason logged."""
    try:
        if kwargs or len(args) != 1 or not isinstance(args[0], dict):
            raise ValueError("expected exactly one JSON object argument")
        return ShardMessage.model_validate(args[0])
    except (ValueError, ValidationError) as exc:
        reason = str(exc).replace("\n", "; ")[:500]
        log.error("refused shard message %s: invalid message: %s", task_id, reason)
        raise Reject(f"invalid shard message: {reason}", requeue=False) from None


def tenant_of(runtime: WorkerRuntime, message: ShardMessage) -> str:
    """The message's tenant for the metrics; "unknown" when its job cannot be read."""
    try:
        return runtime.job_spec(message.job_id).tenant
    except (PermanentError, RedisError):
        return "unknown"


# max_retries=None: the retry count is m3pipe's (M3PIPE_MAX_ATTEMPTS, counted in Redis).
# Celery's own default of 3 would drop the message at the fourth retry and orphan the shard.
@app.task(name=TASK_ENCODE_SHARD, bind=True, max_retries=None)
def encode_shard(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    message = parse_message(self.request.id, args, kwargs)
    runtime = bootstrap.runtime()
    worker = self.request.hostname or runtime.hostname
    tenant = tenant_of(runtime, message)
    try:
        outcome = run_shard(message, runtime)
    except UnknownJob as exc:  # nothing to record it against: refused once, never retried
        log.error("refused shard message %s: %s", self.request.id, exc)
        raise Reject(str(exc), requeue=False) from None
    except WrongWorker as exc:
        # Another worker's shard: back to the queue after a pause, no attempt counted, its
        # state untouched; `status` says what the job waits for.
        log.warning("shard %s of job %s given back: %s", message.shard, message.job_id, exc)
        with contextlib.suppress(RedisError):
            runtime.store.note_waiting(message.job_id, f"{exc}; last given back by {worker}")
        runtime.metrics.shard_ended("given_back", tenant)
        raise self.retry(countdown=runtime.retry_backoff_seconds) from None
    except PermanentError as exc:
        # Bad data or configuration: retrying cannot help.
        runtime.metrics.shard_ended("failed", tenant)
        fail_shard(runtime, message, str(exc), worker)
        raise
    except Exception as exc:
        # Transient (retryable errors, lost connections, I/O): again later, a bounded number
        # of times (pipeline/runtime/retry_policy.py). If even Redis is unreachable, hand the
        # message back to the queue.
        try:
            countdown = after_failure(runtime, message, exc, worker)
        except RedisError:
            log.exception("job state unreachable; shard %s handed back", message.shard)
            raise Reject(f"job state unreachable: {exc!r}", requeue=True) from exc
        runtime.metrics.shard_ended("failed" if countdown is None else "retried", tenant)
        if countdown is None:
            raise
        log.warning("shard %s failed (%r); retry in %.1fs", message.shard, exc, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc
    if outcome.stats is not None:
        runtime.metrics.shard_done(outcome.stats, tenant)
    else:
        ended = "failed" if outcome.state is ShardState.FAILED else "skipped"
        runtime.metrics.shard_ended(ended, tenant)
    for device in runtime.models.devices()[:1]:  # every model sits on the worker's one device
        runtime.metrics.sample_device_memory(device)
    return {
        "job_id": message.job_id,
        "shard": message.shard,
        "state": outcome.state.value if outcome.state is not None else "lost",
        "rows": outcome.rows,
        "tokens": outcome.tokens,
    }
