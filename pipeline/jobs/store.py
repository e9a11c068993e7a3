"""Job state in Redis: specs, shard states and counters, read by the CLI, workers and Flower.

Shard state changes go through one Lua script so the counters in the job hash stay exact
however many times a shard is delivered: a change happens only from an allowed state, and
a finished shard never goes back.
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import redis
from redis.client import NEVER_DECODE

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
    shard_counts_key,
    shard_digest_key,
    shard_info_key,
    shard_owner_key,
    shard_states_key,
    tenant_jobs_key,
    worker_key,
)
from schemas.job import JobSpec, JobState, JobStatus, ShardCounts, ShardState

ABSENT = "-"  # a shard never registered
DEFAULT_JOB_TTL = 7 * 24 * 3600  # an ended job's keys are kept a week (M3PIPE_JOB_TTL)
_STATE_CHUNK = 1 << 16  # shard states read at a time by shards_in_state

# A shard's state is one byte of the job's state string: the first letter of its name.
STATE_CODES = {state: state.value[0] for state in ShardState}
_STATE_OF_CODE = {code: state for state, code in STATE_CODES.items()}
assert len(_STATE_OF_CODE) == len(ShardState), "shard states need distinct first letters"

# A done shard's counts, a fixed record of the job's counts string: (name, BITFIELD type,
# bit offset in the record). `reused` is stored plus one, so 0 means "not a --reuse job".
COUNT_FIELDS = (
    ("documents", "u32", 0),
    ("rows", "u32", 32),
    ("tokens", "i64", 64),
    ("bytes", "i64", 128),
    ("reused", "u32", 192),
)
COUNT_RECORD_BITS = 224  # 28 bytes a shard
# The same record as bytes: BITFIELD stores each integer most significant bit first.
_RECORD = struct.Struct(">IIqqI")
assert _RECORD.size * 8 == COUNT_RECORD_BITS
# A Redis string holds at most 2^32 bits: the counts of ~19 million shards.
MAX_SHARDS = (1 << 32) // COUNT_RECORD_BITS

_TRANSITION = (
    """
local NAMES = {q = 'queued', r = 'running', d = 'done', f = 'failed', c = 'cancelled'}
local shard = tonumber(ARGV[1])
local oldname = NAMES[redis.call('GETRANGE', KEYS[2], shard, shard)] or '-'
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
if oldname ~= '-' then redis.call('HINCRBY', KEYS[1], 'n_' .. oldname, -1) end
redis.call('HINCRBY', KEYS[1], 'n_' .. new, 1)
redis.call('SETRANGE', KEYS[2], shard, string.sub(new, 1, 1))
if new == 'done' then
  -- A done shard keeps its counts in its fixed record (ARGV[12..]: type, offset, value),
  -- not an info. Its digest tells a stale message while the shard may still run; once
  -- done, any later message finds it ended. (The attempt count stays.)
  redis.call('HDEL', KEYS[3], ARGV[1])
  local record = {}
  for i = 12, #ARGV, 3 do
    table.insert(record, 'SET')
    table.insert(record, ARGV[i])
    table.insert(record, shard * """
    + str(COUNT_RECORD_BITS)
    + """ + tonumber(ARGV[i + 1]))
    table.insert(record, ARGV[i + 2])
  end
  redis.call('BITFIELD', KEYS[5], unpack(record))
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'documents_done', ARGV[5])
  redis.call('HINCRBY', KEYS[1], 'rows_done', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'tokens_done', ARGV[7])
  redis.call('HINCRBYFLOAT', KEYS[1], 'encode_seconds', ARGV[8])
  redis.call('HSET', KEYS[1], 'last_done_at', ARGV[9])
  if ARGV[10] ~= '0' then redis.call('HINCRBY', KEYS[1], 'documents_reused', ARGV[10]) end
else
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
  if new == 'running' then
    redis.call('HSETNX', KEYS[1], 'started_at', ARGV[9])
    if redis.call('HGET', KEYS[1], 'state') == 'queued' then
      redis.call('HSET', KEYS[1], 'state', 'running')
    end
  end
end
return {1, oldname}
"""
)


def count_record_args(info: Mapping[str, object]) -> list[str | int]:
    """A done shard's counts from its info, as the transition script's (type, offset,
    value) triples; a count the info lacks is 0."""
    args: list[str | int] = []
    for name, kind, offset in COUNT_FIELDS:
        value = info.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"a done shard's {name} must be a count, not {value!r}")
        if name == "reused":
            value = value + 1 if "reused" in info else 0
        if value >= 1 << (int(kind[1:]) - (kind[0] == "i")):
            raise ValueError(f"a done shard's {name} does not fit its record: {value}")
        args += [kind, offset, value]
    return args


def done_info(record: bytes) -> dict[str, Any]:
    """A done shard's counts from its record's bytes (zeros past the string's end)."""
    values = _RECORD.unpack(record.ljust(_RECORD.size, b"\0"))
    info = {name: int(value) for (name, _, _), value in zip(COUNT_FIELDS, values, strict=True)}
    if info["reused"]:
        info["reused"] -= 1
    else:
        del info["reused"]
    return info


def _info(state: ShardState | None, record: bytes, raw: str | None) -> dict[str, Any]:
    """A shard's info as read: a done shard's counts, any other's JSON (or nothing)."""
    if state is ShardState.DONE:
        return done_info(record)
    return dict(json.loads(raw)) if raw else {}


def _raw_range(pipe: Any, key: str, start: int, length: int) -> None:
    """Queue a GETRANGE of `length` bytes whose reply stays bytes: the client decodes
    replies to str, and a count record is binary (redis-py's own DUMP reads this way)."""
    pipe.execute_command("GETRANGE", key, start, start + length - 1, **{NEVER_DECODE: []})


def _triples(replies: list[Any]) -> Iterator[tuple[Any, Any, Any]]:
    it = iter(replies)
    return zip(it, it, it, strict=True)


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

    # -- shards -----------------------------------------------------------------------
    def queue_shard(
        self, job_id: str, shard: int, digest: str, documents: int, message_digest: str = ""
    ) -> bool:
        """Register a shard about to be sent: its digest (of the documents, and of the
        message when given), QUEUED (from no state), its documents counted as enqueued;
        one round trip. False if it had a state already."""
        pipe = self.redis.pipeline(transaction=False)
        registered = f"{digest} {message_digest}" if message_digest else digest
        pipe.hset(shard_digest_key(job_id), str(shard), registered)
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
            shard_states_key(job_id),
            shard_info_key(job_id, shard),
            shard_digest_key(job_id),
            shard_counts_key(job_id),
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
        if not 0 <= shard < MAX_SHARDS:
            raise ValueError(f"shard {shard} is outside 0..{MAX_SHARDS - 1}")
        done = new is ShardState.DONE
        return [
            shard,
            new.value,
            ",".join(allowed_from),
            json.dumps(dict(info)) if info is not None and not done else "",
            documents,
            rows,
            tokens,
            seconds,
            time.time(),
            reused,
            shard // SHARD_BUCKET,
            *(count_record_args(info or {}) if done else []),
        ]

    def shard_state(self, job_id: str, shard: int) -> str:
        code = cast(str, self.redis.getrange(shard_states_key(job_id), shard, shard))
        state = _STATE_OF_CODE.get(code)
        return state.value if state else ABSENT

    def set_shard_digest(self, job_id: str, shard: int, digest: str) -> None:
        self.redis.hset(shard_digest_key(job_id), str(shard), digest)

    def shard_digest(self, job_id: str, shard: int) -> str | None:
        """The digest of the documents registered for this shard (None if unknown)."""
        return self.registered_digests(job_id, shard)[0]

    def registered_digests(self, job_id: str, shard: int) -> tuple[str | None, str | None]:
        """The digests registered for this shard: of its documents, and of the message
        sent (None if unknown, or registered without one)."""
        value = self._hget(shard_digest_key(job_id), str(shard))
        if value is None:
            return None, None
        documents, _, message = value.partition(" ")
        return documents, message or None

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
        pipe.getrange(shard_states_key(job_id), shard, shard)
        owner, code = pipe.execute()
        return bool(owner == token and code == STATE_CODES[ShardState.RUNNING])

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

    def shards_in_state(self, job_id: str, state: ShardState) -> Iterator[int]:
        """The job's shards now in `state`, in order, streamed: its state string is read
        64 kB at a time (a job of a million shards costs what the caller keeps)."""
        code, key = STATE_CODES[state], shard_states_key(job_id)
        start = 0
        while chunk := cast(str, self.redis.getrange(key, start, start + _STATE_CHUNK - 1)):
            yield from (start + i for i, c in enumerate(chunk) if c == code)
            start += _STATE_CHUNK

    def infos_of(self, job_id: str, shards: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The info of each of `shards` that has one (a done shard's: its counts), in one
        round trip."""
        numbers = list(shards)
        pipe = self.redis.pipeline(transaction=False)
        for shard in numbers:
            pipe.getrange(shard_states_key(job_id), shard, shard)
            _raw_range(pipe, shard_counts_key(job_id), shard * _RECORD.size, _RECORD.size)
            pipe.hget(shard_info_key(job_id, shard), str(shard))
        replies = pipe.execute() if numbers else []
        infos = {}
        for shard, (code, record, raw) in zip(numbers, _triples(replies), strict=True):
            info = _info(_STATE_OF_CODE.get(code), record, raw)
            if info:
                infos[shard] = info
        return infos

    # The whole job at once, a dict entry per shard: for tests and small jobs (production
    # paths stream: shard_records, shards_in_state).
    def shard_states(self, job_id: str) -> dict[int, ShardState]:
        codes = cast(str, self.redis.get(shard_states_key(job_id)) or "")
        return {n: _STATE_OF_CODE[c] for n, c in enumerate(codes) if c in _STATE_OF_CODE}

    def shard_infos(self, job_id: str) -> dict[int, dict[str, Any]]:
        shards = int(cast(int, self.redis.strlen(shard_states_key(job_id))))
        return {shard: info for shard, _, info in self.shard_records(job_id, shards) if info}

    def shard_records(
        self, job_id: str, shards: int, batch: int = 1000
    ) -> Iterator[tuple[int, ShardState | None, dict[str, Any]]]:
        """Shards 0..shards-1 in order with their state (None if it has none) and info, read
        `batch` at a time in one round trip (two GETRANGEs and an HMGET per bucket): no
        command holds Redis for long and nothing is kept per shard, however many shards
        the job has."""
        for start in range(0, shards, batch):
            end = min(start + batch, shards)
            pipe = self.redis.pipeline(transaction=False)
            pipe.getrange(shard_states_key(job_id), start, end - 1)
            size = _RECORD.size
            _raw_range(pipe, shard_counts_key(job_id), start * size, (end - start) * size)
            first = start
            while first < end:  # the batch's part of each info bucket it spans
                stop = min((first // SHARD_BUCKET + 1) * SHARD_BUCKET, end)
                pipe.hmget(shard_info_key(job_id, first), [str(s) for s in range(first, stop)])
                first = stop
            codes, records, *buckets = pipe.execute()
            raws = [raw for reply in buckets for raw in reply]
            codes = codes.ljust(end - start, "\0")
            for i, shard in enumerate(range(start, end)):
                state = _STATE_OF_CODE.get(codes[i])
                yield shard, state, _info(state, records[i * size : (i + 1) * size], raws[i])

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
            waiting=_recent_waiting(fields),
            expires_at=_float(fields.get("expires_at")),
            documents_reused=_int(fields.get("documents_reused")) if spec.reuse else None,
            documents_dropped=(
                _int(fields.get("documents_dropped"))
                if spec.reuse and "documents_dropped" in fields
                else None
            ),
        )


WAITING_SHOWN_SECONDS = 120.0  # a hand-back older than this no longer describes the job


def _recent_waiting(fields: Mapping[str, str]) -> str | None:
    """What the job waits for, if a worker handed a shard back lately and it has not ended."""
    at = _float(fields.get("waiting_at"))
    if at is None or time.time() - at > WAITING_SHOWN_SECONDS or "finished_at" in fields:
        return None
    return fields.get("waiting")
