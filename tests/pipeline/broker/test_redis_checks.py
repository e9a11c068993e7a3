"""A Redis that would lose work is refused before anything is queued or taken (issue 30,
items 3 and 4): an evicting maxmemory-policy (unless M3PIPE_ALLOW_EVICTION, logged) and a
Redis Cluster, each one sentence from `submit`, `worker` and `autoscale`, exit 1. Real
redis-servers: the test's own, and one started in cluster mode."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import subprocess
import sys
import time

import pytest
import redis

from pipeline.broker import redis_checks
from pipeline.broker.redis_checks import check_redis
from pipeline.cli.main import main
from pipeline.errors import RedisUnsuitable
from pipeline.ops.embedded_redis import find_redis_server


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": f"t {i}"}) + "\n" for i in range(5)))
    return path


@pytest.fixture
def evicting(redis_server, monkeypatch):
    client = redis_server.client()
    client.config_set("maxmemory-policy", "allkeys-lru")
    monkeypatch.setenv("M3PIPE_BROKER_URL", redis_server.url)
    monkeypatch.setenv("M3PIPE_MODEL", "random:tiny")
    monkeypatch.delenv("M3PIPE_ALLOW_EVICTION", raising=False)
    return client


def test_submit_refuses_an_evicting_redis_before_queueing_anything(
    evicting, corpus, tmp_path, capsys
):
    assert main(["submit", str(corpus), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "maxmemory-policy allkeys-lru" in err and "noeviction" in err
    assert "M3PIPE_ALLOW_EVICTION" in err and "Traceback" not in err
    assert evicting.dbsize() == 0  # no job, no message


def test_the_override_is_logged_and_the_job_is_queued(
    evicting, corpus, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("M3PIPE_ALLOW_EVICTION", "1")
    monkeypatch.setattr(
        "workers.app.shard_publisher", lambda settings: lambda message, queue, priority: None
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.broker.redis_checks"):
        assert main(["submit", str(corpus), "--out", str(tmp_path / "out")]) == 0
    assert "running anyway because M3PIPE_ALLOW_EVICTION" in caplog.text
    assert evicting.dbsize() > 0


@pytest.mark.slow
def test_a_worker_on_an_evicting_redis_exits_1_with_one_line(evicting, redis_server):
    env = {**os.environ, "M3PIPE_BROKER_URL": redis_server.url, "M3PIPE_PRELOAD": ""}
    env.pop("M3PIPE_ALLOW_EVICTION", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "worker", "--device", "cpu"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("m3pipe worker: Redis may evict keys (maxmemory-policy allkeys-lru)")


def test_an_info_that_acls_forbid_is_warned_once_not_refused(redis_server, caplog, monkeypatch):
    client = redis_server.client()
    client.acl_setuser("m3", enabled=True, passwords=["+pw"], keys=["*"],
                       commands=["+@all", "-info"])  # fmt: skip
    limited = redis.Redis(unix_socket_path=str(redis_server.socket), username="m3", password="pw")
    monkeypatch.setattr(redis_checks, "_warned_unreadable", False)
    with caplog.at_level(logging.WARNING, logger="pipeline.broker.redis_checks"):
        check_redis(limited)
        check_redis(limited)
    assert caplog.text.count("cannot read Redis's maxmemory-policy") == 1


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is a port too."""
    for port in random.sample(range(20000, 55000), 200):
        with socket.socket() as sock, socket.socket() as bus:
            try:
                sock.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise AssertionError("no free port pair")


@pytest.fixture
def cluster_node(tmp_path):
    """One redis-server in cluster mode (no slots assigned: a cluster as far as INFO says)."""
    port = _free_cluster_port()
    process = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--cluster-enabled", "yes", "--cluster-config-file", str(tmp_path / "nodes.conf"),
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "the cluster node did not start"
            time.sleep(0.05)
    yield port, client
    process.terminate()
    process.wait(timeout=10)


def test_a_redis_cluster_is_refused_in_one_sentence(cluster_node, corpus, tmp_path, monkeypatch,
                                                    capsys):  # fmt: skip
    port, client = cluster_node
    with pytest.raises(RedisUnsuitable, match="Redis Cluster"):
        check_redis(client, allow_eviction=True)  # no override for a cluster
    monkeypatch.setenv("M3PIPE_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv("M3PIPE_MODEL", "random:tiny")
    assert main(["submit", str(corpus), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "is a Redis Cluster, which m3pipe does not support" in err and "Traceback" not in err
    # Commands that read job state meet the cluster's refusal: one line too.
    assert main(["jobs"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("m3pipe jobs: Redis refused a command (Hash slot not served)")
    assert line.endswith("a Redis Cluster, which m3pipe does not support")
