"""Shard states and their count records in Redis: one byte of state per shard in the job's
state string, a done shard's counts in its fixed record (pipeline/jobs/shard_report.py),
any other shard's info as JSON in a bucket hash, attempts, ownership fences and digests.

Every state change goes through one Lua script, so the job's counters stay exact however
many times a shard is delivered: a change happens only from an allowed state, and a
finished shard never goes back.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import redis
from redis.client import NEVER_DECODE

from pipeline.jobs.keys import (
    SHARD_BUCKET,
    job_key,
    shard_attempts_key,
    shard_counts_key,
    shard_digest_key,
    shard_info_key,
    shard_owner_key,
    shard_states_key,
)
from pipeline.jobs.redis_records import RedisRecords
from pipeline.jobs.shard_report import COUNT_RECORD_BITS, MAX_SHARDS, RECORD, ShardReport
from schemas.job import ShardState

ABSENT = "-"  # a shard never registered
_STATE_CHUNK = 1 << 16  # shard states read at a time by shards_in_state

# A shard's state is one byte of the job's state string: the first letter of its name.
STATE_CODES = {state: state.value[0] for state in ShardState}
_STATE_OF_CODE = {code: state for state, code in STATE_CODES.items()}
assert len(_STATE_OF_CODE) == len(ShardState), "shard states need distinct first letters"

# ARGV: shard, new state, allowed states (comma-separated), info JSON (not done), a done
# shard's documents, rows, tokens, seconds, the time now, documents reused, the shard's
# info bucket, then its count record as (type, offset, value) triples.
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


def _info(state: ShardState | None, record: bytes, raw: str | None) -> dict[str, Any]:
    """A shard's info as read: a done shard's counts, any other's JSON (or nothing)."""
    if state is ShardState.DONE:
        return ShardReport.from_record(record).counts()
    return dict(json.loads(raw)) if raw else {}


def _raw_range(pipe: Any, key: str, start: int, length: int) -> None:
    """Queue a GETRANGE of `length` bytes whose reply stays bytes: the client decodes
    replies to str, and a count record is binary (redis-py's own DUMP reads this way)."""
    pipe.execute_command("GETRANGE", key, start, start + length - 1, **{NEVER_DECODE: []})


def _triples(replies: list[Any]) -> Iterator[tuple[Any, Any, Any]]:
    it = iter(replies)
    return zip(it, it, it, strict=True)


class ShardStates(RedisRecords):
    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self._transition = client.register_script(_TRANSITION)

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

    def mark_shard(
        self,
        job_id: str,
        shard: int,
        new: ShardState,
        allowed_from: Iterable[str],
        info: Mapping[str, object] | None = None,
    ) -> tuple[bool, str]:
        """Move a shard to `new` (not done: `mark_done`) if its state is one of
        `allowed_from` (ABSENT for none), keeping `info` (why it failed, ...).

        Returns (changed, previous state)."""
        if new is ShardState.DONE:
            raise ValueError("a shard is marked done with its report: mark_done")
        return self._mark(job_id, shard, new, allowed_from, info, None)

    def mark_done(
        self, job_id: str, shard: int, allowed_from: Iterable[str], report: ShardReport
    ) -> tuple[bool, str]:
        """Mark a shard done if its state is one of `allowed_from`: its report's counts are
        added to the job's once and kept in its record; its digest is dropped.

        Returns (changed, previous state)."""
        return self._mark(job_id, shard, ShardState.DONE, allowed_from, None, report)

    def mark_done_replicated(
        self,
        job_id: str,
        shard: int,
        allowed_from: Iterable[str],
        report: ShardReport,
        replicas: int,
        timeout_ms: int,
    ) -> tuple[bool, str, int]:
        """`mark_done`, then WAIT on the same connection until `replicas` replicas have it
        or `timeout_ms` passed. Returns (changed, previous state, replicas that have it)."""
        pipe = self.redis.pipeline(transaction=False)
        self._transition(
            keys=self._transition_keys(job_id, shard),
            args=self._transition_args(shard, ShardState.DONE, allowed_from, None, report),
            client=pipe,
        )
        pipe.execute_command("WAIT", replicas, timeout_ms)
        (changed, old), acknowledged = pipe.execute()
        return bool(changed), str(old), int(acknowledged)

    def _mark(
        self,
        job_id: str,
        shard: int,
        new: ShardState,
        allowed_from: Iterable[str],
        info: Mapping[str, object] | None,
        report: ShardReport | None,
    ) -> tuple[bool, str]:
        changed, old = self._transition(
            keys=self._transition_keys(job_id, shard),
            args=self._transition_args(shard, new, allowed_from, info, report),
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
        report: ShardReport | None = None,
    ) -> list[str | int | float]:
        """The script's ARGV: see _TRANSITION."""
        if not 0 <= shard < MAX_SHARDS:
            raise ValueError(f"shard {shard} is outside 0..{MAX_SHARDS - 1}")
        done = report or ShardReport(0, 0, 0, 0)
        return [
            shard,
            new.value,
            ",".join(allowed_from),
            json.dumps(dict(info)) if info is not None and report is None else "",
            done.documents,
            done.rows,
            done.tokens,
            done.seconds,
            time.time(),
            done.reused or 0,
            shard // SHARD_BUCKET,
            *(done.record_args() if report is not None else []),
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

    def shards_in_state(self, job_id: str, *states: ShardState) -> Iterator[int]:
        """The job's shards now in one of `states`, in order, streamed: its state string is
        read 64 kB at a time, once (a job of a million shards costs what the caller keeps)."""
        codes, key = {STATE_CODES[state] for state in states}, shard_states_key(job_id)
        start = 0
        while chunk := cast(str, self.redis.getrange(key, start, start + _STATE_CHUNK - 1)):
            yield from (start + i for i, c in enumerate(chunk) if c in codes)
            start += _STATE_CHUNK

    def infos_of(self, job_id: str, shards: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The info of each of `shards` that has one (a done shard's: its counts), in one
        round trip."""
        numbers = list(shards)
        pipe = self.redis.pipeline(transaction=False)
        for shard in numbers:
            pipe.getrange(shard_states_key(job_id), shard, shard)
            _raw_range(pipe, shard_counts_key(job_id), shard * RECORD.size, RECORD.size)
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
            size = RECORD.size
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
