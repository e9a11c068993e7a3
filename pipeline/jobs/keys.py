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


# A shard's state is a byte of one string per job (`shard_states_key`), and a done shard's
# counts a fixed 28-byte record of another (`shard_counts_key`): a done shard costs ~30
# bytes of Redis. The infos of shards not done (queued, running, failed: bounded by
# --max-queued, the workers and the failures) are JSON in hashes of SHARD_BUCKET shards
# each, small enough to be stored as listpacks; the job hash's `buckets` field counts them.
SHARD_BUCKET = 100


def shard_states_key(job_id: str) -> str:
    """String: byte n is shard n's state (pipeline/jobs/store.py: STATE_CODES; 0: none)."""
    return f"{PREFIX}:job:{job_id}:shard-states"


def shard_counts_key(job_id: str) -> str:
    """String: a done shard's documents, rows, tokens, bytes and reused documents, a fixed
    record per shard (BITFIELD; pipeline/jobs/store.py: COUNT_FIELDS)."""
    return f"{PREFIX}:job:{job_id}:shard-counts"


def shard_info_base(job_id: str) -> str:
    """The name the info buckets share: `<base>:<n>` holds shards n*SHARD_BUCKET on."""
    return f"{PREFIX}:job:{job_id}:shard-info"


def shard_info_key(job_id: str, shard: int) -> str:
    """Hash: shard index -> details (documents, worker, error...) of a shard not done, for
    the shards of `shard`'s bucket."""
    return f"{shard_info_base(job_id)}:{shard // SHARD_BUCKET}"


def shard_bucket_keys(job_id: str, buckets: int) -> list[str]:
    """Every info bucket of a job with `buckets` buckets."""
    return [f"{shard_info_base(job_id)}:{n}" for n in range(buckets)]


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
    """Every key of one job, its hash first, then the base of its info buckets (the
    scripts that expire and keep a job's keys reach its buckets through it): forgotten
    together, expiring together."""
    return [
        job_key(job_id),
        shard_info_base(job_id),
        shard_states_key(job_id),
        shard_counts_key(job_id),
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
