"""Task definitions. The body reads like a checklist; the work is in
pipeline.runtime.shard_runner."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject
from pydantic import ValidationError
from redis.exceptions import RedisError

from pipeline.errors import PermanentError
from pipeline.jobs.keys import TASK_ENCODE_SHARD
from pipeline.runtime.retry_policy import Action, decide
from pipeline.runtime.shard_runner import run_shard
from pipeline.runtime.worker_runtime import WorkerRuntime
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
    except Exception as exc:
        verdict = decide(runtime, message, exc, worker, tenant)
        if verdict.action is Action.DROP:
            log.error("refused shard message %s: %s", self.request.id, verdict.reason)
            raise Reject(verdict.reason, requeue=False) from None
        if verdict.action is Action.GIVE_BACK:
            raise self.retry(countdown=verdict.countdown) from None
        if verdict.action is Action.HAND_BACK:
            raise Reject(verdict.reason, requeue=True) from exc
        if verdict.action is Action.RETRY:
            raise self.retry(exc=exc, countdown=verdict.countdown) from exc
        raise  # Action.FAIL: recorded, and Celery marks the task failed
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
