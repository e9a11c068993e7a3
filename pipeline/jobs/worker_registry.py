"""The worker registry: one hash per worker (`m3pipe:worker:<name>`), written and read here
only. Its presence means "ready" (the probe, the tests); its shard marker shows a wedged
pool process."""

from __future__ import annotations

import time
from collections.abc import Mapping

from pipeline.jobs.keys import worker_key
from pipeline.jobs.redis_records import RedisRecords


class WorkerRegistry(RedisRecords):
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
