"""Redis with `requirepass`: the password travels in M3PIPE_BROKER_URL to every component."""

from __future__ import annotations

import shutil
import socket
import uuid
from pathlib import Path

import pytest
import redis

from pipeline.embedded_redis import EmbeddedRedis
from pipeline.jobs import JobStore
from pipeline.redis_url import connect, redact
from tests.integration.conftest import Workers, corpus_records, run_cli, write_jsonl


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def protected_redis():
    directory = Path(f"/tmp/m3t-{uuid.uuid4().hex[:8]}")
    with EmbeddedRedis(directory, port=free_port(), password="s3cret-pw") as server:
        yield server
    shutil.rmtree(directory, ignore_errors=True)


def test_password_in_the_url_reaches_producer_workers_and_status(
    tmp_path, protected_redis, cli_env
):
    url = protected_redis.url
    assert url.startswith("redis://:s3cret-pw@127.0.0.1:")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=protected_redis.port).ping()
    cli_env["M3PIPE_BROKER_URL"] = url
    store = JobStore(connect(url))
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    pool = Workers(cli_env, log_dir, store)
    try:
        pool.start(1)
        corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(10))
        submitted = run_cli("submit", str(corpus), "--out", str(tmp_path / "out"), env=cli_env)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().splitlines()[-1]
        assert run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320).returncode == 0
    finally:
        pool.stop_all()
    wrong = {**cli_env, "M3PIPE_BROKER_URL": url.replace("s3cret-pw", "wrong")}
    failed = run_cli("jobs", env=wrong)
    assert failed.returncode == 1 and "s3cret-pw" not in failed.stderr + failed.stdout
    assert redact(url).startswith("redis://:***@")
