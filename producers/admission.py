"""Backpressure and quotas: a job is admitted only under its tenant's job limit, and its
producer waits while `max_queued` of its shards wait in Redis or its tenant is at a shard
quota, so neither the producer nor Redis holds more than that."""

from __future__ import annotations

import logging
import time

from pipeline.errors import QuotaExceeded, SubmitCancelled
from pipeline.jobs.store import JobStore
from pipeline.jobs.tenant_records import job_quota_problem, shard_quota_problem
from schemas.job import JobState
from schemas.tenant import DEFAULT_TENANT

log = logging.getLogger(__name__)


def admit(store: JobStore, tenant: str) -> None:
    """Admission control, before anything is registered or written: QuotaExceeded if the
    tenant is at its job limit."""
    problem = job_quota_problem(store, tenant)
    if problem is not None:
        raise QuotaExceeded(f"refused: {problem}")


def wait_for_room(
    store: JobStore,
    job_id: str,
    max_queued: int,
    poll_seconds: float,
    tenant: str = DEFAULT_TENANT,
) -> None:
    """Block while the job has `max_queued` shards waiting, or its tenant is at a shard
    quota (max_queued, max_in_flight); stop if the job was cancelled."""
    said: str | None = None  # the tenant quota last reported, so it is said once
    waited_since = time.monotonic()
    while True:
        state, queued = store.state_and_queued(job_id)
        if state is JobState.CANCELLED:
            raise SubmitCancelled(f"job {job_id} was cancelled")
        if queued >= max_queued:
            if time.monotonic() - waited_since > 60:
                log.info("job %s: %d shards queued, waiting for workers", job_id, max_queued)
                waited_since = time.monotonic()
        else:
            quota = shard_quota_problem(store, tenant)
            if quota is None:
                return
            if quota != said:
                log.warning("job %s waits at its tenant's quota: %s", job_id, quota)
                said = quota
        time.sleep(poll_seconds)
