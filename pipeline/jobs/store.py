"""Job state in Redis: specs, shard states and counters, read by the CLI, workers and Flower.

Shard state changes go through one Lua script so the counters in the job hash stay exact
however many times a shard is delivered: a change happens only from an allowed state, and
a finished shard never goes back.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import redis

from pipeline.broker.redis_url import DEFAULT_RETRY_SECONDS, connect
from pipeline.errors import JobNotFound
from pipeline.jobs.keys import (
    JOBS_INDEX,
    SHARD_BUCKET,
    TENANTS_INDEX,
    dead_letters_key,
    job_key,
    job_keys,
    retry_letters_key,
    shard_attempts_key,
    shard_bucket_keys,
    shard_digest_key,
    shard_info_key,
    shard_owner_key,
    shard_state_key,
    tenant_jobs_key,
    worker_key,
)
from schemas.job import JobSpec, JobState, JobStatus, ShardCounts, ShardState

ABSENT = "-"  # a shard never registered
DEFAULT_JOB_TTL = 7 * 24 * 3600  # an ended job's keys are kept a week (M3PIPE_JOB_TTL)

_TRANSITION = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
local oldname = old or '-'
local allowed = false
for s in string.gmatch(ARGV[3], '[^,]+') do
  if s == oldname then allowed = true end
end
if not allowed then return {0, oldname} end
local bucket = tonumber(ARGV[11])
if bucket >= tonumber(redis.call('HGET', KEYS[1], 'buckets') or '0') then
  redis.call('HSET', KEYS[1], 'buckets', bucket + 1)
end
local new = ARGV[2]
if old then redis.call('HINCRBY', KEYS[1], 'n_' .. old, -1) end
redis.call('HINCRBY', KEYS[1], 'n_' .. new, 1)
redis.call('HSET', KEYS[2], ARGV[1], new)
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
if new == 'running' then
  redis.call('HSETNX', KEYS[1], 'started_at', ARGV[9])
  if redis.call('HGET', KEYS[1], 'state') == 'queued' then
    redis.call('HSET', KEYS[1], 'state', 'running')
  end
elseif new == 'done' then
  -- Its digest tells a stale message while the shard may still run; once done, any
  -- later message finds it ended. (The attempt count stays: how many deliveries it took.)
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'documents_done', ARGV[5])
  redis.call('HINCRBY', KEYS[1], 'rows_done', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'tokens_done', ARGV[7])
  redis.call('HINCRBYFLOAT', KEYS[1], 'encode_seconds', ARGV[8])
  redis.call('HSET', KEYS[1], 'last_done_at', ARGV[9])
  if ARGV[10] ~= '0' then redis.call('HINCRBY', KEYS[1], 'documents_reused', ARGV[10]) end
end
return {1, oldname}
"""

# A done shard's info is most of what a job keeps in Redis per shard, kept until the job's
# keys expire: it is written as its values in a fixed order (~60 bytes) rather than JSON
# with the keys (~180). Any other info (queued, running, failed, retried, resumed) is JSON,
# which never starts with the tag.
_DONE_TAG = "d1|"
_DONE_INTS = ("documents", "rows", "tokens", "bytes")
_DONE_FLOATS = ("seconds", "finished_at", "padding_efficiency")
_DONE_KEYS = frozenset((*_DONE_INTS, *_DONE_FLOATS, "worker"))


def encode_info(info: Mapping[str, object]) -> str:
    """A shard's info as stored: compact for a done shard's usual facts, else JSON."""
    keys = set(info)
    compact = (keys == _DONE_KEYS or keys == _DONE_KEYS | {"reused"}) and (
        all(type(info[k]) is int for k in _DONE_INTS)
        and all(type(info[k]) in (int, float) for k in _DONE_FLOATS)
        and type(info.get("reused", 0)) is int
        and isinstance(info["worker"], str)
    )
    if not compact:
        return json.dumps(dict(info))
    values = [repr(info[k]) for k in (*_DONE_INTS, *_DONE_FLOATS)]
    values.append(repr(info["reused"]) if "reused" in info else "")
    return _DONE_TAG + "|".join([*values, str(info["worker"])])  # the worker last: any text


def decode_info(raw: str) -> dict[str, Any]:
    """The info `encode_info` stored."""
    if not raw.startswith(_DONE_TAG):
        return dict(json.loads(raw))
    *values, reused, worker = raw.removeprefix(_DONE_TAG).split("|", len(_DONE_KEYS))
    info: dict[str, Any] = {k: int(v) for k, v in zip(_DONE_INTS, values, strict=False)}
    info.update((k, float(v)) for k, v in zip(_DONE_FLOATS, values[len(_DONE_INTS) :], strict=True))
    info["worker"] = worker
    if reused:
        info["reused"] = int(reused)
    return info


# A job's shard buckets (keys.SHARD_BUCKET), reached from the bucket bases KEYS[2] and
# KEYS[3] and the job hash's count (standalone Redis: these keys are not declared).
_EACH_BUCKET = """
local function each_bucket(command, ...)
  local n = tonumber(redis.call('HGET', KEYS[1], 'buckets') or '0')
  for b = 0, n - 1 do
    redis.call(command, KEYS[2] .. ':' .. b, ...)
    redis.call(command, KEYS[3] .. ':' .. b, ...)
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


def _int(value: str | None) -> int:
    return int(value) if value else 0


def _float(value: str | None) -> float | None:
    return float(value) if value else None


class JobStore:
    """Reads and changes job state. Holds a redis-py client, nothing else."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._transition = client.register_script(_TRANSITION)
        self._finish = client.register_script(_FINISH)
        self._final_if_active = client.register_script(_FINAL_IF_ACTIVE)
        self._reopen = client.register_script(_REOPEN)

    @classmethod
    def connect(cls, url: str, retry_seconds: float = DEFAULT_RETRY_SECONDS) -> JobStore:
        return cls(connect(url, retry_seconds))

    # The client decodes responses (see redis_url.connect): values are str.
    def _hget(self, key: str, field: str) -> str | None:
        return cast(str | None, self.redis.hget(key, field))

    def _hgetall(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], self.redis.hgetall(key))

    # -- jobs -------------------------------------------------------------------------
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

    # -- shards -----------------------------------------------------------------------
    def queue_shard(self, job_id: str, shard: int, digest: str, documents: int) -> bool:
        """Register a shard about to be sent: its digest, QUEUED (from no state), its
        documents counted as enqueued; one round trip. False if it had a state already."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(shard_digest_key(job_id), str(shard), digest)
        self._transition(
            keys=self._transition_keys(job_id, shard),
            args=self._transition_args(
                shard, ShardState.QUEUED, [ABSENT], {"documents": documents}
            ),
            client=pipe,
        )
        pipe.hincrby(job_key(job_id), "documents_enqueued", documents)
        _, (changed, _old), _ = pipe.execute()
        return bool(changed)

    def state_and_queued(self, job_id: str) -> tuple[JobState, int]:
        """The job's state and its shards waiting in the queue, in one round trip."""
        state, queued = cast(
            list[str | None], self.redis.hmget(job_key(job_id), ["state", "n_queued"])
        )
        if state is None:
            raise JobNotFound(job_id)
        return JobState(state), _int(queued)

    def mark_shard(
        self,
        job_id: str,
        shard: int,
        new: ShardState,
        allowed_from: Iterable[str],
        info: Mapping[str, object] | None = None,
        *,
        documents: int = 0,
        rows: int = 0,
        tokens: int = 0,
        seconds: float = 0.0,
        reused: int = 0,
    ) -> tuple[bool, str]:
        """Move a shard to `new` if its state is one of `allowed_from` (ABSENT for none).

        Returns (changed, previous state). Counters of done shards (documents, rows,
        tokens, seconds, documents copied by --reuse) are added once; a done shard's digest
        is dropped.
        """
        changed, old = self._transition(
            keys=self._transition_keys(job_id, shard),
            args=self._transition_args(
                shard, new, allowed_from, info, documents, rows, tokens, seconds, reused
            ),
        )
        return bool(changed), str(old)

    @staticmethod
    def _transition_keys(job_id: str, shard: int) -> list[str]:
        return [
            job_key(job_id),
            shard_state_key(job_id, shard),
            shard_info_key(job_id, shard),
            shard_digest_key(job_id),
        ]

    @staticmethod
    def _transition_args(
        shard: int,
        new: ShardState,
        allowed_from: Iterable[str],
        info: Mapping[str, object] | None = None,
        documents: int = 0,
        rows: int = 0,
        tokens: int = 0,
        seconds: float = 0.0,
        reused: int = 0,
    ) -> list[str | int | float]:
        return [
            shard,
            new.value,
            ",".join(allowed_from),
            encode_info(info) if info is not None else "",
            documents,
            rows,
            tokens,
            seconds,
            time.time(),
            reused,
            shard // SHARD_BUCKET,
        ]

    def shard_state(self, job_id: str, shard: int) -> str:
        return self._hget(shard_state_key(job_id, shard), str(shard)) or ABSENT

    def set_shard_digest(self, job_id: str, shard: int, digest: str) -> None:
        self.redis.hset(shard_digest_key(job_id), str(shard), digest)

    def shard_digest(self, job_id: str, shard: int) -> str | None:
        """The digest of the documents registered for this shard (None if unknown)."""
        return self._hget(shard_digest_key(job_id), str(shard))

    # Attempts are one byte per shard in a string (BITFIELD u8, saturating at 255: far above
    # any M3PIPE_MAX_ATTEMPTS), not a hash field: ~1 byte a shard instead of ~90.
    def count_attempt(self, job_id: str, shard: int) -> int:
        """One more delivery of this shard started; returns how many have."""
        [count] = (
            self.redis.bitfield(shard_attempts_key(job_id), default_overflow="SAT")
            .incrby("u8", f"#{shard}", 1)
            .execute()
        )
        return int(count)

    def attempts(self, job_id: str, shard: int) -> int:
        [count] = self.redis.bitfield(shard_attempts_key(job_id)).get("u8", f"#{shard}").execute()
        return int(count or 0)

    def take_ownership(self, job_id: str, shard: int) -> str:
        """This delivery now owns the shard: a token only it holds (fencing)."""
        token = uuid.uuid4().hex
        self.redis.hset(shard_owner_key(job_id), str(shard), token)
        return token

    def owns(self, job_id: str, shard: int, token: str) -> bool:
        """Whether the delivery holding `token` still owns the running shard: no later
        delivery took it over and nobody ended it (the commit fence)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(shard_owner_key(job_id), str(shard))
        pipe.hget(shard_state_key(job_id, shard), str(shard))
        owner, state = pipe.execute()
        return bool(owner == token and state == ShardState.RUNNING.value)

    def keep_retry_letter(self, job_id: str, shard: int, message_json: str) -> None:
        """Keep a shard's message while it waits for a retry, so a lost retry is re-sent."""
        self.redis.hset(retry_letters_key(job_id), str(shard), message_json)

    def retry_letter(self, job_id: str, shard: int) -> str | None:
        return self._hget(retry_letters_key(job_id), str(shard))

    def release_shard(self, job_id: str, shard: int) -> None:
        """The shard ended: its kept retry message and its owner token are no longer needed
        (a stale attempt's fence then fails on the ended state). One round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(retry_letters_key(job_id), str(shard))
        pipe.hdel(shard_owner_key(job_id), str(shard))
        pipe.execute()

    def dead_letter(self, job_id: str, shard: int, message_json: str) -> None:
        """Keep a failed shard's message so `m3pipe retry` can send it again."""
        self.redis.hset(dead_letters_key(job_id), str(shard), message_json)

    def dead_letters(self, job_id: str) -> dict[int, str]:
        return {int(k): v for k, v in self._hgetall(dead_letters_key(job_id)).items()}

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

    def queued_shards(self, job_id: str) -> int:
        return _int(self._hget(job_key(job_id), "n_queued"))

    def _buckets(self, job_id: str) -> int:
        return _int(self._hget(job_key(job_id), "buckets"))

    def _bucket_fields(
        self, job_id: str, key: Callable[[str, int], str]
    ) -> Iterator[tuple[str, str]]:
        """Every field of a job's buckets of one kind (`key`: the bucket of a shard), read
        100 buckets a round trip (each HGETALL is short: Redis is never held for long) and
        yielded as read: what is kept is the caller's choice."""
        buckets = self._buckets(job_id)
        for start in range(0, buckets, 100):
            pipe = self.redis.pipeline(transaction=False)
            for bucket in range(start, min(start + 100, buckets)):
                pipe.hgetall(key(job_id, bucket * SHARD_BUCKET))
            for reply in pipe.execute():
                yield from reply.items()

    def shards_in_state(self, job_id: str, state: ShardState) -> Iterator[int]:
        """The job's shards now in `state`, unsorted, streamed (a job of a million shards
        costs what the caller keeps)."""
        for field, value in self._bucket_fields(job_id, shard_state_key):
            if value == state.value:
                yield int(field)

    def infos_of(self, job_id: str, shards: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The info of each of `shards` that has one, in one round trip."""
        numbers = list(shards)
        pipe = self.redis.pipeline(transaction=False)
        for shard in numbers:
            pipe.hget(shard_info_key(job_id, shard), str(shard))
        replies = pipe.execute() if numbers else []
        return {s: decode_info(raw) for s, raw in zip(numbers, replies, strict=True) if raw}

    # The whole job at once, a dict entry per shard: for tests and small jobs (production
    # paths stream: shard_records, shards_in_state).
    def shard_infos(self, job_id: str) -> dict[int, dict[str, Any]]:
        fields = self._bucket_fields(job_id, shard_info_key)
        return {int(k): decode_info(v) for k, v in fields}

    def shard_states(self, job_id: str) -> dict[int, ShardState]:
        return {int(k): ShardState(v) for k, v in self._bucket_fields(job_id, shard_state_key)}

    def shard_records(
        self, job_id: str, shards: int, batch: int = 1000
    ) -> Iterator[tuple[int, ShardState | None, dict[str, Any]]]:
        """Shards 0..shards-1 in order with their state (None if it has none) and info, read
        `batch` at a time (one round trip, two HMGETs per bucket): no command holds Redis for long
        and nothing is kept per shard, however many shards the job has."""
        for start in range(0, shards, batch):
            numbers = range(start, min(start + batch, shards))
            pipe = self.redis.pipeline(transaction=False)
            first = start
            while first < numbers.stop:  # the batch's part of each bucket it spans
                end = min((first // SHARD_BUCKET + 1) * SHARD_BUCKET, numbers.stop)
                wanted = [str(shard) for shard in range(first, end)]
                pipe.hmget(shard_state_key(job_id, first), wanted)
                pipe.hmget(shard_info_key(job_id, first), wanted)
                first = end
            replies = pipe.execute()
            states = [state for reply in replies[0::2] for state in reply]
            infos = [info for reply in replies[1::2] for info in reply]
            fields = [str(shard) for shard in numbers]
            for field, state, info in zip(fields, states, infos, strict=True):
                yield (
                    int(field),
                    ShardState(state) if state else None,
                    decode_info(info) if info else {},
                )

    # -- workers ----------------------------------------------------------------------
    # The worker record (`m3pipe:worker:<name>`) is written and read here only: its presence
    # means "ready" (the probe, the tests), its shard marker shows a wedged pool process.
    def forget_worker(self, worker: str) -> None:
        """Drop an earlier record (a pool process killed mid-shard left its shard marker)."""
        self.redis.delete(worker_key(worker))

    def register_worker(self, worker: str, record: Mapping[str, object], ttl: int) -> None:
        """The worker is ready: what it loaded, on which device, when; kept `ttl` seconds."""
        key = worker_key(worker)
        self.redis.hset(key, mapping=dict(record))  # type: ignore[arg-type]
        self.redis.expire(key, ttl)

    def note_worker_field(self, worker: str, field: str, value: object) -> None:
        """One more fact about a registered worker (a model loaded on its first shard)."""
        self.redis.hset(worker_key(worker), field, value)  # type: ignore[arg-type]

    def note_busy(self, worker: str, shard: str, started: float) -> None:
        self.redis.hset(worker_key(worker), mapping={"shard": shard, "shard_started": started})

    def note_idle(self, worker: str) -> None:
        self.redis.hdel(worker_key(worker), "shard", "shard_started")
        self.redis.hset(worker_key(worker), "last_shard_ended", time.time())

    def worker_record(self, worker: str) -> dict[str, str]:
        return self._hgetall(worker_key(worker))

    # -- status -----------------------------------------------------------------------
    def status(self, job_id: str) -> JobStatus:
        fields = self._hgetall(job_key(job_id))
        if not fields or "spec" not in fields:
            raise JobNotFound(job_id)
        spec = JobSpec.model_validate_json(fields["spec"])
        submitted = fields.get("submitted") == "1"
        started = _float(fields.get("started_at"))
        finished = _float(fields.get("finished_at"))
        tokens = _int(fields.get("tokens_done"))
        documents_done = _int(fields.get("documents_done"))
        documents = (
            _int(fields.get("documents")) if submitted else _int(fields.get("documents_enqueued"))
        )
        end = finished or time.time()
        elapsed = end - started if started else 0.0
        # Shards found done by --resume count as done, but not towards this run's speed.
        encoded_tokens = tokens - _int(fields.get("tokens_resumed"))
        encoded_documents = documents_done - _int(fields.get("documents_resumed"))
        rate = encoded_tokens / elapsed if elapsed > 0 else 0.0
        eta = None
        if submitted and started and encoded_documents > 0 and not finished:
            eta = (documents - documents_done) * elapsed / encoded_documents
        return JobStatus(
            job_id=job_id,
            task=spec.task,
            tenant=spec.tenant,
            priority=spec.priority,
            state=JobState(fields["state"]),
            submitted=submitted,
            shards=ShardCounts(
                total=_int(fields.get("shards_total")) if submitted else None,
                queued=_int(fields.get("n_queued")),
                running=_int(fields.get("n_running")),
                done=_int(fields.get("n_done")),
                failed=_int(fields.get("n_failed")),
                cancelled=_int(fields.get("n_cancelled")),
            ),
            input_records=_int(fields.get("input_records")) if submitted else None,
            documents=documents,
            documents_done=documents_done,
            rows_done=_int(fields.get("rows_done")),
            rejected=_int(fields.get("rejected")) if submitted else None,
            tokens_done=tokens,
            tokens_per_second=round(rate, 1),
            eta_seconds=round(eta, 1) if eta is not None else None,
            created_at=float(fields["created_at"]),
            started_at=started,
            finished_at=finished,
            out=spec.out,
            queue=spec.queue,
            model=spec.model,
            error=fields.get("error"),
            expires_at=_float(fields.get("expires_at")),
            documents_reused=_int(fields.get("documents_reused")) if spec.reuse else None,
            documents_dropped=(
                _int(fields.get("documents_dropped"))
                if spec.reuse and "documents_dropped" in fields
                else None
            ),
        )
