"""Tenants in Redis: their limits, what they use now, and the quota checks of a submit.

Usage is summed from the job hashes of the tenant's active jobs (the counters the shard
transitions keep exact), so it needs no second set of counters to drift. Two producers of
one tenant checking at the same moment may each pass: limits hold to within one shard per
concurrent producer, which is what a quota on shared GPUs needs, not a hard invariant.
"""

from __future__ import annotations

from typing import Any, cast

from pipeline.jobs.keys import TENANTS_INDEX, job_key, tenant_jobs_key, tenant_key
from pipeline.jobs.store import JobStore
from schemas.job import JobState
from schemas.tenant import TenantLimits, TenantUsage

_ACTIVE = (JobState.QUEUED.value, JobState.RUNNING.value)


def tenant_names(store: JobStore) -> list[str]:
    return sorted(cast(set[str], store.redis.smembers(TENANTS_INDEX)))


def tenant_limits(store: JobStore, tenant: str) -> TenantLimits:
    raw = cast(dict[str, str], store.redis.hgetall(tenant_key(tenant)))
    return TenantLimits.model_validate({k: int(v) for k, v in raw.items() if v})


def set_tenant_limits(store: JobStore, tenant: str, limits: TenantLimits) -> None:
    """Replace the tenant's limits (a None field removes that limit)."""
    values = limits.model_dump()
    key = tenant_key(tenant)
    pipe = store.redis.pipeline()
    pipe.hdel(key, *[name for name, value in values.items() if value is None] or ["-"])
    given: dict[Any, int] = {name: value for name, value in values.items() if value is not None}
    if given:
        pipe.hset(key, mapping=given)
    pipe.sadd(TENANTS_INDEX, tenant)
    pipe.execute()


def tenant_usage(store: JobStore, tenant: str) -> TenantUsage:
    """Active jobs and their queued and running shards; ended jobs leave the index here."""
    members = sorted(cast(set[str], store.redis.smembers(tenant_jobs_key(tenant))))
    pipe = store.redis.pipeline(transaction=False)
    for job_id in members:
        pipe.hmget(job_key(job_id), "state", "n_queued", "n_running")
    usage = TenantUsage(tenant=tenant)
    ended = []
    for job_id, (state, queued, running) in zip(members, pipe.execute(), strict=True):
        if state not in _ACTIVE:
            ended.append(job_id)
            continue
        usage.jobs += 1
        usage.queued += int(queued or 0)
        usage.running += int(running or 0)
    if ended:
        store.redis.srem(tenant_jobs_key(tenant), *ended)
    return usage


def job_quota_problem(store: JobStore, tenant: str) -> str | None:
    """Why the tenant may not start another job now, or None (usage read only if limited)."""
    limits = tenant_limits(store, tenant)
    if limits.max_jobs is None:
        return None
    usage = tenant_usage(store, tenant)
    if usage.jobs >= limits.max_jobs:
        return (
            f"tenant {tenant} has {usage.jobs} active job(s), its limit is "
            f"{limits.max_jobs}: wait for one to end (m3pipe jobs --tenant {tenant}), or "
            f"raise it (m3pipe tenants set {tenant} --max-jobs N)"
        )
    return None


def shard_quota_problem(store: JobStore, tenant: str) -> str | None:
    """Why the tenant may not enqueue another shard now, or None. Called once per shard:
    a tenant without shard limits costs one read, not a sum over its jobs."""
    limits = tenant_limits(store, tenant)
    if limits.max_queued is None and limits.max_in_flight is None:
        return None
    usage = tenant_usage(store, tenant)
    if limits.max_queued is not None and usage.queued >= limits.max_queued:
        return f"tenant {tenant} has {usage.queued} shard(s) queued (limit {limits.max_queued})"
    if limits.max_in_flight is not None and usage.in_flight >= limits.max_in_flight:
        return (
            f"tenant {tenant} has {usage.in_flight} shard(s) queued or running "
            f"(limit {limits.max_in_flight})"
        )
    return None
