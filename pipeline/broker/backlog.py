"""A queue's backlog as the autoscaler, KEDA and the metrics see it: waiting plus in flight.

Celery's Redis transport (kombu) keeps a queue as up to four lists, one per priority step
(`name`, `name\\x06\\x163`, `name\\x06\\x166`, `name\\x06\\x169`), and every delivered but
unacknowledged message in the `unacked` hash as JSON `[message, exchange, routing_key]`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import redis

PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_KEY = "unacked"

# In-flight messages per routing key, counted inside Redis: each `unacked` value holds a
# whole shard (up to --shard-bytes), so reading them out and parsing the JSON on every
# poll would cost megabytes per worker. The routing key is the last JSON string of the
# value, so only its tail is looked at (queue names are at most 64 characters).
_COUNT_UNACKED = """
local counts = {}
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
  local key = string.match(string.sub(value, -300), '"([^"]*)"%s*%]%s*$')
  if key then counts[key] = (counts[key] or 0) + 1 end
end
local flat = {}
for key, n in pairs(counts) do
  flat[#flat + 1] = key
  flat[#flat + 1] = n
end
return flat
"""


def priority_lists(queue: str) -> list[str]:
    """The Redis lists holding `queue`'s waiting messages, one per priority step."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


@dataclass(frozen=True)
class Backlog:
    queued: int  # waiting in the queue's lists
    in_flight: int  # delivered to a worker, not yet acknowledged

    @property
    def total(self) -> int:
        return self.queued + self.in_flight


def backlogs(client: redis.Redis, queues: Iterable[str]) -> dict[str, Backlog]:
    """Each queue's backlog: one round trip for the lists, one script over `unacked`."""
    names = list(dict.fromkeys(queues))
    pipe = client.pipeline(transaction=False)
    for queue in names:
        for key in priority_lists(queue):
            pipe.llen(key)
    lengths = pipe.execute()
    steps = len(PRIORITY_STEPS)
    queued = {q: sum(lengths[i * steps : (i + 1) * steps]) for i, q in enumerate(names)}
    in_flight = dict.fromkeys(names, 0)
    flat = client.eval(_COUNT_UNACKED, 1, UNACKED_KEY)
    for raw_key, count in zip(flat[::2], flat[1::2], strict=True):
        key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
        if key in in_flight:
            in_flight[key] = int(count)
    return {q: Backlog(queued=queued[q], in_flight=in_flight[q]) for q in names}


def backlog(client: redis.Redis, queue: str) -> Backlog:
    return backlogs(client, [queue])[queue]
