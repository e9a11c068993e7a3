"""Job state in Redis, read by the CLI, workers and Flower: `JobStore`, the one object
callers hold, made of one class per concern, each in its own module:

- job_records.JobRecords: the job hash, its status (built by job_status.py), its end;
- shard_states.ShardStates: shard states, their count records, attempts and fences;
- letter_records.LetterRecords: dead and retry letters;
- worker_registry.WorkerRegistry: what each worker loaded, and which shard it runs.

What spans them (a dead-lettered shard reopened for `retry`) is here.
"""

from __future__ import annotations

from pipeline.broker.redis_url import DEFAULT_RETRY_SECONDS, connect
from pipeline.jobs.job_records import DEFAULT_JOB_TTL, JobRecords
from pipeline.jobs.keys import dead_letters_key, job_keys, shard_attempts_key
from pipeline.jobs.letter_records import LetterRecords
from pipeline.jobs.shard_states import ABSENT, ShardStates
from pipeline.jobs.worker_registry import WorkerRegistry
from schemas.job import ShardState

__all__ = ["ABSENT", "DEFAULT_JOB_TTL", "JobStore"]


class JobStore(JobRecords, ShardStates, LetterRecords, WorkerRegistry):
    """Reads and changes job state. Holds a redis-py client, nothing else; each concern's
    `__init__` registers its own scripts (cooperatively, through `super()`)."""

    @classmethod
    def connect(cls, url: str, retry_seconds: float = DEFAULT_RETRY_SECONDS) -> JobStore:
        return cls(connect(url, retry_seconds))

    def reopen_shard(self, job_id: str, shard: int) -> bool:
        """A dead-lettered shard goes back to queued with fresh attempts (for `retry`)."""
        if not self._reopen(keys=job_keys(job_id)):
            return False
        changed, _ = self.mark_shard(
            job_id, shard, ShardState.QUEUED, [ShardState.FAILED.value], {"retried": True}
        )
        if changed:
            self.redis.bitfield(shard_attempts_key(job_id)).set("u8", f"#{shard}", 0).execute()
            self.redis.hdel(dead_letters_key(job_id), str(shard))
        return changed
