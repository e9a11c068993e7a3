"""Task definitions. The body reads like a checklist; the work is in pipeline.shard_runner."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.exceptions import Reject
from pydantic import ValidationError

from pipeline.errors import PermanentError, RetryableError
from pipeline.keys import TASK_ENCODE_SHARD
from pipeline.settings import Settings
from pipeline.shard_runner import UnknownJob, fail_shard, requeue_shard, run_shard
from schemas.job import ShardMessage
from workers import bootstrap
from workers.app import app

log = logging.getLogger(__name__)

RETRY_BACKOFF_SECONDS = (5, 30, 120, 600)


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


def retry_countdown(retries: int) -> int:
    return RETRY_BACKOFF_SECONDS[min(retries, len(RETRY_BACKOFF_SECONDS) - 1)]


@app.task(name=TASK_ENCODE_SHARD, bind=True)
def encode_shard(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    message = parse_message(self.request.id, args, kwargs)
    runtime = bootstrap.runtime()
    worker = self.request.hostname or runtime.hostname
    try:
        outcome = run_shard(message, runtime)
    except UnknownJob:
        log.error("refused shard message %s: unknown job %s", self.request.id, message.job_id)
        raise
    except PermanentError as exc:
        fail_shard(runtime.store, message, str(exc), worker)
        raise
    except RetryableError as exc:
        retries = self.request.retries
        if retries >= Settings().task_max_retries:
            fail_shard(runtime.store, message, f"gave up after {retries + 1} tries: {exc}", worker)
            raise
        requeue_shard(runtime.store, message, str(exc), retries + 1)
        raise self.retry(exc=exc, countdown=retry_countdown(retries)) from exc
    except Exception as exc:
        fail_shard(runtime.store, message, f"unexpected error: {exc!r}", worker)
        raise
    return {
        "job_id": message.job_id,
        "shard": message.shard,
        "state": outcome.state.value,
        "rows": outcome.rows,
        "tokens": outcome.tokens,
    }
