"""The worker registry: one hash per worker (`m3pipe:worker:<name>`), written and read here
only. Its presence means "ready" (the probe, the tests); its shard markers, one per slot
(pool process), show a wedged one."""

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

    def forget_slot(self, worker: str, slot: int) -> None:
        """Drop one slot's shard marker (its pool process was replaced: the shard it held
        is redelivered), leaving the other slots' and the worker's record."""
        self.redis.hdel(worker_key(worker), *slot_fields(slot))

    def note_busy(self, worker: str, shard: str, started: float, slot: int = 0) -> None:
        shard_field, started_field = slot_fields(slot)
        self.redis.hset(worker_key(worker), mapping={shard_field: shard, started_field: started})

    def note_idle(self, worker: str, slot: int = 0) -> None:
        self.redis.hdel(worker_key(worker), *slot_fields(slot))
        self.redis.hset(worker_key(worker), "last_shard_ended", time.time())

    def worker_record(self, worker: str) -> dict[str, str]:
        return self._hgetall(worker_key(worker))


def slot_fields(slot: int) -> tuple[str, str]:
    """The fields of slot `slot`'s shard marker: `shard` and `shard_started` for the first
    (as a one-slot worker always had), `shard:N` and `shard_started:N` for the others."""
    suffix = f":{slot}" if slot else ""
    return f"shard{suffix}", f"shard_started{suffix}"


def shard_markers(record: Mapping[str, str]) -> list[tuple[str, float]]:
    """(shard, started) of each slot's shard marker in a worker's record."""
    markers = []
    for name, value in record.items():
        if name.startswith("shard_started"):
            suffix = name[len("shard_started") :]
            markers.append((record.get(f"shard{suffix}", "?"), float(value)))
    return markers
