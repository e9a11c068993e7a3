"""Every Redis key, queue and task name m3pipe uses, in one place.

Celery owns its own keys (the queue lists, `unacked`, `unacked_index`, results); these are ours.
"""

from __future__ import annotations

PREFIX = "m3pipe"
DEFAULT_QUEUE = "m3pipe"
TASK_ENCODE_SHARD = "m3pipe.encode_shard"


def shard_task_id(job_id: str, shard: int) -> str:
    """The Celery task id of a shard's message (Flower shows it; orphan checks look for it)."""
    return f"{job_id}-{shard:05d}"


JOBS_INDEX = f"{PREFIX}:jobs"  # sorted set: job id -> created_at
TENANTS_INDEX = f"{PREFIX}:tenants"  # set: every tenant that submitted or has limits


def job_key(job_id: str) -> str:
    """Hash: spec, state, counters, timestamps of one job."""
    return f"{PREFIX}:job:{job_id}"


# Shard states and infos live in hashes of SHARD_BUCKET shards each, not one hash per job:
# a small hash is stored as a listpack, a few bytes a field, where a large one costs ~70
# bytes of Redis's own per field (docs/scale.md). The job hash's `buckets` field counts them.
SHARD_BUCKET = 100


def shard_state_base(job_id: str) -> str:
    """The name the state buckets share: `<base>:<n>` holds shards n*SHARD_BUCKET on."""
    return f"{PREFIX}:job:{job_id}:shard-state"


def shard_info_base(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:shard-info"


def shard_state_key(job_id: str, shard: int) -> str:
    """Hash: shard index -> ShardState value, for the shards of `shard`'s bucket."""
    return f"{shard_state_base(job_id)}:{shard // SHARD_BUCKET}"


def shard_info_key(job_id: str, shard: int) -> str:
    """Hash: shard index -> details (documents, file, worker, error...), by bucket."""
    return f"{shard_info_base(job_id)}:{shard // SHARD_BUCKET}"


def shard_bucket_keys(job_id: str, buckets: int) -> list[str]:
    """Every state and info bucket of a job with `buckets` buckets."""
    return [
        f"{base}:{n}"
        for n in range(buckets)
        for base in (shard_state_base(job_id), shard_info_base(job_id))
    ]


def shard_attempts_key(job_id: str) -> str:
    """Hash: shard index -> deliveries started (crashes and retries included)."""
    return f"{PREFIX}:job:{job_id}:shard-attempts"


def shard_digest_key(job_id: str) -> str:
    """Hash: shard index -> sha256 of the documents registered for it (stale-message check)."""
    return f"{PREFIX}:job:{job_id}:shard-digest"


def shard_owner_key(job_id: str) -> str:
    """Hash: shard index -> token of the delivery now running it (fences stale attempts)."""
    return f"{PREFIX}:job:{job_id}:shard-owner"


def retry_letters_key(job_id: str) -> str:
    """Hash: shard index -> the message of a shard waiting for a retry (re-sent if lost)."""
    return f"{PREFIX}:job:{job_id}:retry-letters"


def dead_letters_key(job_id: str) -> str:
    """Hash: shard index -> the shard message of a shard that failed for good."""
    return f"{PREFIX}:job:{job_id}:dead-letters"


def job_keys(job_id: str) -> list[str]:
    """Every key of one job, its hash first, then the bases of its shard buckets (the
    scripts that expire and keep a job's keys reach its buckets through them): forgotten
    together, expiring together."""
    return [
        job_key(job_id),
        shard_state_base(job_id),
        shard_info_base(job_id),
        shard_attempts_key(job_id),
        shard_digest_key(job_id),
        shard_owner_key(job_id),
        retry_letters_key(job_id),
        dead_letters_key(job_id),
    ]


def worker_key(hostname: str) -> str:
    """Hash: what a worker process loaded and when it became ready."""
    return f"{PREFIX}:worker:{hostname}"


def tenant_key(tenant: str) -> str:
    """Hash: a tenant's limits (max_jobs, max_queued, max_in_flight)."""
    return f"{PREFIX}:tenant:{tenant}"


def tenant_jobs_key(tenant: str) -> str:
    """Set: the tenant's jobs that may still be active (ended ones are pruned on read)."""
    return f"{PREFIX}:tenant:{tenant}:jobs"
