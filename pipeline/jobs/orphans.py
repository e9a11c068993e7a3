"""Orphaned shards: `queued` or `running` in their job while no message for them exists.

A shard waits in a queue list or, delivered, in kombu's `unacked` hash until its worker
acknowledges it, after the shard is done (late acks): a running shard's message is in
`unacked`. If its message is lost anyway (a failover that lost the record of a delivery the
old primary had just made, a broker that lost data, a producer killed between registering a
shard and sending it), `m3pipe wait` would wait forever. `m3pipe status` and `m3pipe wait`
find such shards, `m3pipe repair` sends them again from the job's plan, and `m3pipe retry`
re-sends the ones whose message m3pipe kept (a shard waiting for a retry).
A shard is called orphaned only if it is missing from two looks a moment apart with no
change of state in between, so a message on its way (a retry being sent) is not one.
"""

from __future__ import annotations

import time

import redis

from pipeline.broker.backlog import UNACKED_KEY, priority_lists
from pipeline.jobs.keys import shard_task_id
from pipeline.jobs.store import JobStore
from schemas.job import ShardState

# The task id of every message in a queue's lists and in `unacked`, read inside Redis:
# kombu writes a message's properties (with `correlation_id`, the task id) last, so only
# the tail of each entry is looked at, never its (large) body.
_TASK_IDS = """
local ids = {}
for i, key in ipairs(KEYS) do
  local values
  if i == 1 then
    values = redis.call('HVALS', key)
  else
    values = redis.call('LRANGE', key, 0, -1)
  end
  for _, value in ipairs(values) do
    local id = string.match(string.sub(value, -4096), '"correlation_id":%s*"([^"]*)"')
    if id then ids[#ids + 1] = id end
  end
end
return ids
"""
SETTLE_SECONDS = 1.0


def message_task_ids(client: redis.Redis, queue: str) -> set[str]:
    """Task ids of the messages waiting in `queue` or delivered and not yet acknowledged."""
    found = client.eval(_TASK_IDS, 1 + len(priority_lists(queue)), UNACKED_KEY,
                        *priority_lists(queue))  # fmt: skip
    return {value.decode() if isinstance(value, bytes) else str(value) for value in found}


def _missing(store: JobStore, job_id: str, queue: str) -> dict[int, str]:
    """Queued or running shards with no message, each with its info as it stands (to see a
    change).

    Memory follows the messages and the active shards (bounded by --max-queued and the
    workers), not the job: its shard states are streamed, and only the missing shards' infos
    are read.
    """
    if store.active_shards(job_id) == 0:  # the job's counts: no scan of its states
        return {}
    active = list(store.shards_in_state(job_id, ShardState.QUEUED, ShardState.RUNNING))
    present = message_task_ids(store.redis, queue)  # after: a message sent meanwhile shows
    missing = [shard for shard in active if shard_task_id(job_id, shard) not in present]
    infos = store.infos_of(job_id, missing)
    return {shard: repr(infos.get(shard)) for shard in missing}


def orphaned_shards(store: JobStore, job_id: str) -> list[int]:
    """Queued or running shards of the job with no message anywhere, in two looks
    SETTLE_SECONDS apart, with the same state."""
    queue = store.spec(job_id).queue
    first = _missing(store, job_id, queue)
    if not first:
        return []
    time.sleep(SETTLE_SECONDS)
    second = _missing(store, job_id, queue)
    return sorted(shard for shard, info in first.items() if second.get(shard) == info)
