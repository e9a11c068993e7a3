"""Redis with `requirepass` and TLS: URL, password and TLS options reach every component."""

from __future__ import annotations

import shutil
import ssl
import uuid
from pathlib import Path

import pytest
import redis

from pipeline.broker.redis_url import connect, redact
from pipeline.jobs.store import JobStore
from pipeline.ops.embedded_redis import EmbeddedRedis
from pipeline.settings import Settings
from tests.integration.conftest import Workers, corpus_records, free_port, run_cli, write_jsonl
from tests.integration.tls_proxy import TlsProxy


@pytest.fixture
def protected_redis():
    directory = Path(f"/tmp/m3t-{uuid.uuid4().hex[:8]}")
    with EmbeddedRedis(directory, port=free_port(), password="s3cret-pw") as server:
        yield server
    shutil.rmtree(directory, ignore_errors=True)


def run_job_through(url: str, tmp_path: Path, cli_env: dict) -> None:
    """A worker, `submit` and `wait`, all given `url`: the job completes."""
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


def test_password_in_the_url_reaches_producer_workers_and_status(
    tmp_path, protected_redis, cli_env
):
    url = protected_redis.url
    assert url.startswith("redis://:s3cret-pw@127.0.0.1:")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=protected_redis.port).ping()
    run_job_through(url, tmp_path, cli_env)
    wrong = {**cli_env, "M3PIPE_BROKER_URL": url.replace("s3cret-pw", "wrong")}
    failed = run_cli("jobs", env=wrong)
    assert failed.returncode == 1 and "s3cret-pw" not in failed.stderr + failed.stdout
    assert redact(url).startswith("redis://:***@")
    # A worker given the wrong password exits 1 at once with one line (it exited 0 after
    # 10-17 s of tracebacks), before Celery starts.
    worker = run_cli("worker", "--device", "cpu", env=wrong, timeout=60)
    assert worker.returncode == 1, worker.stderr
    assert worker.stderr.strip().splitlines() == [
        f"m3pipe worker: cannot reach Redis at {redact(wrong['M3PIPE_BROKER_URL'])}: invalid "
        "username-password pair or user is disabled. (set M3PIPE_BROKER_URL)"
    ]


def test_a_worker_that_cannot_start_exits_non_zero_saying_why(tmp_path, cli_env, model_cache):
    """Unreachable Redis and a model that is not there are found before Celery starts (one
    line, exit 1); weights that fail to load in the pool process end the worker with exit 1
    and their reason as its last line."""
    closed = {**cli_env, "M3PIPE_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    unreachable = run_cli("worker", "--device", "cpu", env=closed, timeout=60)
    assert unreachable.returncode == 1
    assert len(unreachable.stderr.strip().splitlines()) == 1
    assert "cannot reach Redis at redis://127.0.0.1:" in unreachable.stderr
    missing = run_cli("worker", "--device", "cpu", "--model", "BAAI/not-cached-here",
                      env={**cli_env, "HF_HUB_OFFLINE": "1"}, timeout=60)  # fmt: skip
    assert missing.returncode == 1
    [line] = missing.stderr.strip().splitlines()
    assert line.startswith("m3pipe worker: ") and "not-cached-here" in line
    from pipeline.engine.random_model import cached_random_model

    broken = tmp_path / "broken-model"
    shutil.copytree(cached_random_model("tiny", model_cache), broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    failed = run_cli("worker", "--device", "cpu", "--model", str(broken), env=cli_env, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith("m3pipe worker: cannot start: ")


def test_rediss_url_with_its_tls_options_reaches_every_component(
    tmp_path, protected_redis, cli_env
):
    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with TlsProxy(protected_redis.port, server_context) as proxy:
        base = f"rediss://:s3cret-pw@localhost:{proxy.port}/0"
        # Verified by default: without the CA the certificate is refused, by redis-py...
        unverified = {**cli_env, "M3PIPE_BROKER_URL": base}
        failed = run_cli("jobs", env=unverified)
        assert failed.returncode == 1 and "certificate verify failed" in failed.stderr
        # ...and by the worker's Celery connection, which kombu alone would not verify.
        from workers.app import celery_config

        config = celery_config(Settings(broker_url=base))
        assert config["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        # With the CA in the URL, producer, worker and `wait` all work over TLS.
        handshakes = proxy.connections
        run_job_through(f"{base}?ssl_cert_reqs=required&ssl_ca_certs={ca_file}", tmp_path, cli_env)
        assert proxy.connections > handshakes + 3  # every component came through TLS
