"""A queue's backlog as the autoscaler, KEDA and the metrics see it: waiting plus in flight.

Celery's Redis transport (kombu) keeps a queue as up to four lists, one per priority step
(`name`, `name\\x06\\x163`, `name\\x06\\x166`, `name\\x06\\x169`), and every delivered but
unacknowledged message in the `unacked` hash as JSON `[message, exchange, routing_key]`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import redis

PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED_KEY = "unacked"


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
    """Each queue's backlog, read in one round trip plus one scan of `unacked`."""
    names = list(dict.fromkeys(queues))
    pipe = client.pipeline(transaction=False)
    for queue in names:
        for key in priority_lists(queue):
            pipe.llen(key)
    lengths = pipe.execute()
    steps = len(PRIORITY_STEPS)
    queued = {q: sum(lengths[i * steps : (i + 1) * steps]) for i, q in enumerate(names)}
    in_flight = dict.fromkeys(names, 0)
    # Small by construction: each worker holds at most one unacknowledged shard.
    for raw in client.hvals(UNACKED_KEY):
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue  # not a kombu entry: nothing to count
        if routing_key in in_flight:
            in_flight[routing_key] += 1
    return {q: Backlog(queued=queued[q], in_flight=in_flight[q]) for q in names}


def backlog(client: redis.Redis, queue: str) -> Backlog:
    return backlogs(client, [queue])[queue]
