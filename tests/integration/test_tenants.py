"""Tenants and priorities with real Redis and real workers: fair share, priority, isolation,
quotas. Shards hold one short document each, so ordering (not speed) is what is measured."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds

from pipeline.exit_codes import EXIT_FAILED
from pipeline.jobs.resume import read_shard_file
from tests.integration.conftest import corpus_records, run_cli, write_jsonl


def submit(tmp_path, env, name: str, docs: int, *flags: str) -> str:
    corpus = write_jsonl(tmp_path / f"{name}.jsonl", corpus_records(docs))
    done = run_cli(
        "submit", str(corpus), "--out", str(tmp_path / name), "--shard-docs", "1", *flags,
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def wait(job_id: str, env) -> None:
    waited = run_cli("wait", job_id, "--timeout", "300", env=env, timeout=320)
    assert waited.returncode == 0, waited.stderr


def finished(store, job_id: str) -> list[tuple[float, str, int, str]]:
    """(encoded_at, job, shard, worker) of each done shard, from its part's footer."""
    facts = [
        read_shard_file(part).facts for part in Path(store.spec(job_id).out).glob("part-*.parquet")
    ]
    return [(f["encoded_at"], job_id, f["shard"], f["worker"]) for f in facts]


def assert_every_document_once(out, docs: int) -> None:
    ids = ds.dataset(out, format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == [f"doc-{i:05d}" for i in range(docs)]


def test_two_tenants_share_one_worker_fairly(tmp_path, cli_env, workers, store):
    job_a = submit(tmp_path, cli_env, "a", 30, "--tenant", "a")
    job_b = submit(tmp_path, cli_env, "b", 30, "--tenant", "b")  # queued behind all of A's
    workers.start(1, tenants="a,b")
    wait(job_a, cli_env)
    wait(job_b, cli_env)
    order = sorted(finished(store, job_a) + finished(store, job_b))
    first_ten = [job for _, job, _, _ in order[:10]]
    assert first_ten.count(job_a) >= 3 and first_ten.count(job_b) >= 3, first_ten
    assert_every_document_once(tmp_path / "a", 30)
    assert_every_document_once(tmp_path / "b", 30)
    listing = run_cli("tenants", "--json", env=cli_env)
    rows = {row["tenant"]: row for row in json.loads(listing.stdout)}
    assert rows["a"]["queue"] == "m3pipe.a" and rows["a"]["jobs"] == 0
    assert [s["tenant"] for s in json.loads(run_cli("jobs", "--json", env=cli_env).stdout)] == [
        "b",
        "a",
    ]


def test_a_high_priority_job_overtakes_a_normal_backlog(tmp_path, cli_env, workers, store):
    normal = submit(tmp_path, cli_env, "normal", 40, "--max-queued", "40")
    high = submit(tmp_path, cli_env, "high", 3, "--priority", "high")
    workers.start(1)
    wait(normal, cli_env)
    wait(high, cli_env)
    assert store.status(high).finished_at < store.status(normal).finished_at
    order = [job for _, job, _, _ in sorted(finished(store, normal) + finished(store, high))]
    # The worker may have taken one normal shard before the high job's were visible to it.
    assert order.index(high) <= 1 and order[:5].count(high) == 3, order
    assert store.status(high).priority.value == "high"


def test_a_dedicated_worker_never_runs_another_tenants_shards(tmp_path, cli_env, workers, store):
    [only_a] = workers.start(1, tenants="a")
    job_a = submit(tmp_path, cli_env, "a", 6, "--tenant", "a")
    job_b = submit(tmp_path, cli_env, "b", 6, "--tenant", "b")
    wait(job_a, cli_env)
    time.sleep(1.0)  # a worker that took B's shards would have done so by now
    assert store.status(job_b).shards.queued == 6 and store.status(job_b).shards.done == 0
    [for_b] = workers.start(1, tenants="b")
    wait(job_b, cli_env)
    assert {w for *_, w in finished(store, job_a)} == {only_a}
    assert {w for *_, w in finished(store, job_b)} == {for_b}


def test_tenant_quota_refuses_a_second_job_and_holds_a_submit_at_its_shard_limit(
    tmp_path, cli_env, workers, store
):
    limits = ("tenants", "set", "acme", "--max-jobs", "1", "--max-queued", "3")
    assert run_cli(*limits, env=cli_env).returncode == 0
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(10))
    producer = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "submit", str(corpus), "--out",
         str(tmp_path / "a"), "--shard-docs", "1", "--tenant", "acme"],
        env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not store.job_ids() or store.status(store.job_ids()[0]).shards.queued < 3:
            assert time.monotonic() < deadline and producer.poll() is None
            time.sleep(0.1)
        time.sleep(1.0)
        [job_id] = store.job_ids()
        assert store.status(job_id).shards.queued == 3 and producer.poll() is None  # waiting
        refused = run_cli(
            "submit", str(corpus), "--out", str(tmp_path / "b"), "--tenant", "acme", env=cli_env
        )
        assert refused.returncode == EXIT_FAILED
        assert "tenant acme has 1 active job(s), its limit is 1" in refused.stderr
        assert not (tmp_path / "b").exists() and store.job_ids() == [job_id]
        workers.start(1, tenants="acme")
        _, stderr = producer.communicate(timeout=120)
    finally:
        producer.kill()
    assert producer.returncode == 0, stderr
    assert "waits at its tenant's quota: tenant acme has 3 shard(s) queued (limit 3)" in stderr
    wait(job_id, cli_env)
    assert_every_document_once(tmp_path / "a", 10)


def test_an_autoscaled_pool_follows_its_own_tenants_backlog_only(tmp_path, cli_env, store):
    import signal

    from tests.integration.test_autoscale import children
    from tests.integration.test_metrics import scrape
    from tests.integration.test_redis_auth import free_port

    job_a = submit(tmp_path, cli_env, "a", 4, "--tenant", "a")
    job_b = submit(tmp_path, cli_env, "b", 4, "--tenant", "b")
    port = free_port()
    log_path = tmp_path / "autoscale.log"
    with open(log_path, "w") as log:
        scaler = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "autoscale", "--devices", "cpu:1",
             "--tenants", "a", "--cooldown", "0.5", "--poll", "0.2", "--metrics-port",
             str(port), "--worker-metrics-port", "0", "--log-dir", str(tmp_path / "logs")],
            env=cli_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait(job_a, cli_env)
        deadline = time.monotonic() + 60
        while children(scaler.pid):  # a's backlog is gone: back to zero, b's does not count
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        time.sleep(0.5)
        metrics = scrape(port)
        assert metrics[("m3pipe_autoscaler_backlog", (("queue", "m3pipe.a"),))] == 0
        assert not any(key[0] == "m3pipe_autoscaler_backlog" and key[1] != (("queue", "m3pipe.a"),)
                       for key in metrics)  # fmt: skip
        assert store.status(job_b).shards.queued == 4  # untouched by a's pool
    finally:
        scaler.send_signal(signal.SIGTERM)
        assert scaler.wait(timeout=120) == 0
