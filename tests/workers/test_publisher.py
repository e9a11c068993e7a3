"""The producer's publisher against a real redis-server: one shard task is one message on
its queue, with no per-task result subscription (Redis state is what is watched)."""

from __future__ import annotations

from pipeline.settings import Settings
from schemas.document import Document
from schemas.job import ShardMessage
from schemas.tenant import Priority
from workers.app import shard_publisher


def test_a_shard_is_sent_without_subscribing_to_its_result(store, redis_server):
    publish = shard_publisher(Settings(broker_url=redis_server.url))
    store.redis.config_resetstat()
    for shard in range(3):
        message = ShardMessage(
            job_id="job-1", shard=shard, documents=[Document(id=f"d{shard}", text="t")]
        )
        publish(message, "m3pipe-test", Priority.NORMAL)
    calls = {name: stats["calls"] for name, stats in store.redis.info("commandstats").items()}
    assert calls.get("cmdstat_lpush") == 3  # one message each
    assert "cmdstat_subscribe" not in calls and "cmdstat_psubscribe" not in calls
