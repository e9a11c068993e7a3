"""M3PIPE_REDIS_WAIT_REPLICAS (issue 30, item 2): a worker marks a shard done and waits until
that many replicas have it before the shard's message is acknowledged, so a failover to a
replica never loses a done shard whose message is gone. Real master and replica."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import time

import pytest
import redis

from pipeline.jobs.store import JobStore
from pipeline.ops.embedded_redis import EmbeddedRedis, find_redis_server
from pipeline.runtime.shard_runner import run_shard
from schemas.job import ShardState
from tests.integration.conftest import free_port, wait_until
from tests.pipeline.runtime.queue_job import runtime_of, submitted


@pytest.fixture
def master_and_replica(tmp_path):
    """(master, a client of its one replica)."""
    with EmbeddedRedis(tmp_path / "master", port=free_port()) as master:
        port = free_port()
        replica = subprocess.Popen(
            [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path),  # its sync snapshot: not in cwd
             "--replicaof", "127.0.0.1", str(master.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            client = redis.Redis(port=port, socket_connect_timeout=2, decode_responses=True)
            wait_until(lambda: master.client().info("replication")["connected_slaves"] == 1,
                       timeout=30)  # fmt: skip
            yield master, client
        finally:
            replica.kill()
            replica.wait()


def test_a_done_shard_is_on_the_replica_before_the_worker_returns(
    tmp_path, tiny, master_and_replica, caplog
):
    master, replica = master_and_replica
    store = JobStore.connect(master.url)
    job_id, sent = submitted(tmp_path, store, documents=20)
    runtime = dataclasses.replace(runtime_of(store, tiny), wait_replicas=1, wait_ms=10_000)
    assert run_shard(sent[0], runtime).state is ShardState.DONE
    # No wait here: WAIT returned only once the replica had the write.
    assert JobStore(replica).shard_state(job_id, 0) == ShardState.DONE.value
    assert runtime.metrics.unreplicated_shards._value.get() == 0

    # Two replicas asked, one there: the shard still ends done, after the timeout, said.
    short = dataclasses.replace(runtime, wait_replicas=2, wait_ms=100)
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        assert run_shard(sent[1], short).state is ShardState.DONE
    assert time.perf_counter() - started >= 0.1
    assert "1 of 2 replica(s)" in caplog.text
    assert short.metrics.unreplicated_shards._value.get() == 1
