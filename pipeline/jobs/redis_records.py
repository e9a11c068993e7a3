"""The base of the job-state classes: a redis-py client whose replies are str
(pipeline.broker.redis_url.connect decodes them), and the reads they share."""

from __future__ import annotations

from typing import cast

import redis


class RedisRecords:
    """Holds a redis-py client, nothing else. Each concern's class (job records, shard
    states, letters, the worker registry) builds on it and registers its own scripts."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def _hget(self, key: str, field: str) -> str | None:
        return cast(str | None, self.redis.hget(key, field))

    def _hgetall(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], self.redis.hgetall(key))


def as_int(value: str | None) -> int:
    return int(value) if value else 0


def as_float(value: str | None) -> float | None:
    return float(value) if value else None
