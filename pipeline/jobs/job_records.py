"""Job records in Redis: one hash per job (its spec, state, totals and times), the jobs and
tenants indexes, and the job's status as the CLI, `wait` and Flower read it. A job's end is
set by script, once, when every shard has ended (or by force: a failed submission, cancel),
and an ended job's keys expire after its TTL.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis

from pipeline.errors import JobNotFound
from pipeline.jobs.job_status import status_from_fields
from pipeline.jobs.keys import (
    JOBS_INDEX,
    TENANTS_INDEX,
    job_key,
    job_keys,
    shard_bucket_keys,
    tenant_jobs_key,
)
from pipeline.jobs.redis_records import RedisRecords, as_int
from schemas.job import JobSpec, JobState, JobStatus

DEFAULT_JOB_TTL = 7 * 24 * 3600  # an ended job's keys are kept a week (M3PIPE_JOB_TTL)

# A job's info buckets (keys.SHARD_BUCKET), reached from the bucket base KEYS[2] and the
# job hash's count (standalone Redis: these keys are not declared).
_EACH_BUCKET = """
local function each_bucket(command, ...)
  local n = tonumber(redis.call('HGET', KEYS[1], 'buckets') or '0')
  for b = 0, n - 1 do
    redis.call(command, KEYS[2] .. ':' .. b, ...)
  end
end
"""

# An ended job's keys (KEYS, the job hash first, and its buckets) expire `ttl` seconds after
# it ended (the job's own setting, from submit; 0 keeps them). ARGV[1] of the caller is the
# time now.
_EXPIRE_ENDED = (
    _EACH_BUCKET
    + """
local function expire_ended(now)
  local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or '0')
  if ttl > 0 then
    redis.call('HSET', KEYS[1], 'expires_at', tonumber(now) + ttl)
    for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ttl) end
    each_bucket('EXPIRE', ttl)
  end
end
"""
)

# Sets the final state once every shard has ended; never overrides an earlier final state.
_FINISH = (
    _EXPIRE_ENDED
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'submitted', 'shards_total',
                     'n_done', 'n_failed', 'n_cancelled')
local state = f[1]
if state ~= 'queued' and state ~= 'running' then return state end
if f[2] ~= '1' then return false end
local done, failed, cancelled = tonumber(f[4] or '0'), tonumber(f[5] or '0'),
                                tonumber(f[6] or '0')
if done + failed + cancelled < tonumber(f[3]) then return false end
local final = 'completed'
if failed > 0 then final = 'completed_with_failures' end
if failed > 0 and done == 0 then final = 'failed' end
redis.call('HSET', KEYS[1], 'state', final, 'finished_at', ARGV[1])
expire_ended(ARGV[1])
return final
"""
)

_FINAL_IF_ACTIVE = (
    _EXPIRE_ENDED
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return state end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
expire_ended(ARGV[2])
return ARGV[1]
"""
)


# Back to work after `m3pipe retry`: only a job that ended with failures is reopened.
_REOPEN = (
    _EACH_BUCKET
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'completed_with_failures' or state == 'failed' then
  redis.call('HSET', KEYS[1], 'state', 'running')
  redis.call('HDEL', KEYS[1], 'finished_at', 'error', 'expires_at')
  for i = 1, #KEYS do redis.call('PERSIST', KEYS[i]) end
  each_bucket('PERSIST')
  return 1
end
if state == 'running' or state == 'queued' then return 1 end
return 0
"""
)


class JobRecords(RedisRecords):
    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self._finish = client.register_script(_FINISH)
        self._final_if_active = client.register_script(_FINAL_IF_ACTIVE)
        self._reopen = client.register_script(_REOPEN)

    def create(self, spec: JobSpec, ttl: int = DEFAULT_JOB_TTL) -> None:
        """Register a job; its keys expire `ttl` seconds after it ends (0: kept)."""
        key = job_key(spec.job_id)
        if not self.redis.hsetnx(key, "spec", spec.model_dump_json()):
            raise ValueError(f"job {spec.job_id} already exists")
        self.redis.hset(
            key,
            mapping={
                "state": JobState.QUEUED.value,
                "created_at": spec.created_at,
                "submitted": 0,
                "ttl": max(0, int(ttl)),
            },
        )
        self.redis.zadd(JOBS_INDEX, {spec.job_id: spec.created_at})
        self.redis.sadd(tenant_jobs_key(spec.tenant), spec.job_id)
        self.redis.sadd(TENANTS_INDEX, spec.tenant)

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(job_key(job_id)))

    def spec(self, job_id: str) -> JobSpec:
        raw = self._hget(job_key(job_id), "spec")
        if raw is None:
            raise JobNotFound(job_id)
        return JobSpec.model_validate_json(raw)

    def is_active(self, job_id: str) -> bool | None:
        """Whether the job has not ended (it may still write its output); None when it is
        not known (never registered, or expired)."""
        raw = self._hget(job_key(job_id), "state")
        return None if raw is None else not JobState(raw).finished

    def state(self, job_id: str) -> JobState:
        raw = self._hget(job_key(job_id), "state")
        if raw is None:
            raise JobNotFound(job_id)
        return JobState(raw)

    def job_ids(self, limit: int = 50) -> list[str]:
        """Most recent first; jobs whose keys expired leave the index as they are met."""
        ids = cast(list[str], self.redis.zrevrange(JOBS_INDEX, 0, limit - 1))
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(job_key(job_id))
        present = pipe.execute()
        gone = [job_id for job_id, found in zip(ids, present, strict=True) if not found]
        if gone:
            self.redis.zrem(JOBS_INDEX, *gone)
        return [job_id for job_id, found in zip(ids, present, strict=True) if found]

    def set_submitted(
        self, job_id: str, *, shards: int, documents: int, input_records: int, rejected: int
    ) -> None:
        self.redis.hset(
            job_key(job_id),
            mapping={
                "shards_total": shards,
                "documents": documents,
                "input_records": input_records,
                "rejected": rejected,
                "submitted": 1,
            },
        )

    def note_resumed(self, job_id: str, documents: int, tokens: int) -> None:
        """A shard counted done from its existing file (`--resume`), not encoded now."""
        self.redis.hincrby(job_key(job_id), "documents_resumed", documents)
        self.redis.hincrby(job_key(job_id), "tokens_resumed", tokens)

    def set_reuse_plan(self, job_id: str, *, reused: int, dropped: int) -> None:
        """--reuse: documents the producer found unchanged in the previous output, and the
        previous output's documents no longer in the input."""
        self.redis.hset(
            job_key(job_id), mapping={"reuse_planned": reused, "documents_dropped": dropped}
        )

    def note_documents(self, job_id: str, documents: int) -> None:
        """Documents enqueued so far, while the producer is still cutting shards."""
        self.redis.hincrby(job_key(job_id), "documents_enqueued", documents)

    def set_model_metadata(self, job_id: str, metadata: dict[str, object]) -> None:
        self.redis.hsetnx(job_key(job_id), "model_metadata", json.dumps(metadata))

    def pin_model_metadata(self, job_id: str, metadata: dict[str, object]) -> dict[str, Any]:
        """The job's model identity: `metadata` if this is the first worker to run a shard
        of it, else what the first one pinned (one round trip)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(job_key(job_id), "model_metadata", json.dumps(metadata))
        pipe.hget(job_key(job_id), "model_metadata")
        pinned = pipe.execute()[1]
        return dict(json.loads(pinned)) if pinned else dict(metadata)

    def note_compute_dtype(self, job_id: str, dtype: str) -> None:
        """A job of any precision: one more compute dtype its shards ran at (at most 3)."""
        self.redis.hset(job_key(job_id), f"dtype_{dtype}", 1)

    def compute_dtypes(self, job_id: str) -> list[str]:
        fields = self._hgetall(job_key(job_id))
        return sorted(name.removeprefix("dtype_") for name in fields if name.startswith("dtype_"))

    def note_waiting(self, job_id: str, reason: str) -> None:
        """A worker handed a shard back (it cannot serve the job): shown by `status`."""
        self.redis.hset(
            job_key(job_id), mapping={"waiting": reason[:500], "waiting_at": time.time()}
        )

    def model_metadata(self, job_id: str) -> dict[str, Any] | None:
        raw = self._hget(job_key(job_id), "model_metadata")
        return json.loads(raw) if raw else None

    def finish_if_complete(self, job_id: str) -> JobState | None:
        """The final state if every shard has ended (setting it once), else None."""
        result = self._finish(keys=job_keys(job_id), args=[time.time()])
        return JobState(result) if result else None

    def end(self, job_id: str, state: JobState, error: str = "") -> JobState:
        """Force a final state (failed submission, cancel) unless the job already ended."""
        result = self._final_if_active(
            keys=job_keys(job_id), args=[state.value, time.time(), error]
        )
        if result is None:
            raise JobNotFound(job_id)
        return JobState(result)

    def forget(self, job_id: str) -> None:
        """Delete every key of a job (before `--resume` registers it afresh)."""
        keys = job_keys(job_id) + shard_bucket_keys(job_id, self._buckets(job_id))
        spec = self._hget(job_key(job_id), "spec")
        if spec is not None:
            self.redis.srem(tenant_jobs_key(JobSpec.model_validate_json(spec).tenant), job_id)
        for start in range(0, len(keys), 1000):
            self.redis.delete(*keys[start : start + 1000])
        self.redis.zrem(JOBS_INDEX, job_id)

    def note_error(self, job_id: str, error: str) -> None:
        """Record why a job could not end cleanly (shown by `m3pipe status`)."""
        self.redis.hset(job_key(job_id), "error", error[:2000])

    def cancel(self, job_id: str) -> JobState:
        if not self.exists(job_id):
            raise JobNotFound(job_id)
        return self.end(job_id, JobState.CANCELLED)

    def state_and_queued(self, job_id: str) -> tuple[JobState, int]:
        """The job's state and its shards waiting in the queue, in one round trip."""
        state, queued = cast(
            list[str | None], self.redis.hmget(job_key(job_id), ["state", "n_queued"])
        )
        if state is None:
            raise JobNotFound(job_id)
        return JobState(state), as_int(queued)

    def active_shards(self, job_id: str) -> int:
        """Shards queued or running, from the job's counts."""
        counts = cast(
            list[str | None], self.redis.hmget(job_key(job_id), ["n_queued", "n_running"])
        )
        return sum(as_int(count) for count in counts)

    def _buckets(self, job_id: str) -> int:
        return as_int(self._hget(job_key(job_id), "buckets"))

    def status(self, job_id: str) -> JobStatus:
        fields = self._hgetall(job_key(job_id))
        if not fields or "spec" not in fields:
            raise JobNotFound(job_id)
        return status_from_fields(job_id, fields)
