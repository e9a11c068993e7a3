"""Poison shards: bounded attempts, dead letters, `m3pipe retry`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pyarrow.dataset as ds

from pipeline.jobs.keys import worker_key
from pipeline.storage.output_dir import part_entries
from tests.integration.conftest import corpus_records, run_cli, slow_stub, submit


def test_shard_that_raises_every_time_is_dead_lettered_then_retried(
    tmp_path, cli_env, workers, store
):
    cli_env.update(M3PIPE_MAX_ATTEMPTS="2", M3PIPE_RETRY_BACKOFF_SECONDS="0.2")
    job_id = submit(tmp_path, cli_env, corpus_records(30), "--shard-docs", "10")
    blocker = tmp_path / "out" / "part-00001.parquet"
    blocker.mkdir()  # the atomic rename onto this path fails on every attempt
    workers.start(1)
    assert run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320).returncode == 1
    status = json.loads(run_cli("status", job_id, "--json", env=cli_env).stdout)
    assert status["state"] == "completed_with_failures"
    assert (status["shards"]["done"], status["shards"]["failed"]) == (2, 1)
    info = store.shard_infos(job_id)[1]
    assert (
        "dead-lettered after 2 attempts" in info["error"] and "IsADirectoryError" in info["error"]
    )
    assert list(store.dead_letters(job_id)) == [1]
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert [f["shard"] for f in manifest["failed_shards"]] == [1]

    blocker.rmdir()
    assert run_cli("retry", job_id, env=cli_env).returncode == 0
    assert run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320).returncode == 0
    ids = ds.dataset(tmp_path / "out", format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == [f"doc-{i:05d}" for i in range(30)]
    assert store.dead_letters(job_id) == {}
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["failed_shards"] == [] and len(part_entries(tmp_path / "out")) == 3


def test_shard_that_kills_its_worker_every_time_is_dead_lettered(
    tmp_path, cli_env, stub_built, workers, store
):
    cli_env.update(M3PIPE_MAX_ATTEMPTS="2")
    from pipeline.engine.synthetic_text import TextGenerator

    slow_stub(cli_env, stub_built, 2500)  # each delivery lasts ~4 s: killed mid-shard
    gen = TextGenerator(1)
    records = [{"id": f"long-{i}", "text": gen.document(300)} for i in range(8)]
    job_id = submit(tmp_path, cli_env, records)
    [name] = workers.start(1)
    kills = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        state = store.shard_states(job_id).get(0)
        if state is not None and state.value == "failed":
            break
        # A new delivery of the shard has started: kill it, on each of the two it may have.
        # (The third is dead-lettered at once; killing it too would race that, as a loaded
        # CI machine showed.)
        if kills < 2 and store.attempts(job_id, 0) > kills:
            pid = int(store.redis.hget(worker_key(name), "pid"))
            os.kill(pid, signal.SIGKILL)  # the pool process dies mid-shard, every time
            kills += 1
        time.sleep(0.02)
    assert kills == 2
    assert run_cli("wait", job_id, "--timeout", "60", env=cli_env).returncode == 1
    status = store.status(job_id)
    assert status.state.value == "failed" and status.shards.failed == 1
    assert "dead-lettered: 2 deliveries never finished" in store.shard_infos(job_id)[0]["error"]
    assert not list((tmp_path / "out").glob("part-*.parquet"))


def test_permanent_error_fails_at_once_without_retry(tmp_path, cli_env, workers, store):
    """A shard that cannot succeed (here: its output directory is gone) is not retried."""
    cli_env.update(M3PIPE_MAX_ATTEMPTS="3", M3PIPE_RETRY_BACKOFF_SECONDS="0.2")
    job_id = submit(tmp_path, cli_env, corpus_records(20), "--shard-docs", "10")
    shutil.rmtree(tmp_path / "out")
    workers.start(1)
    assert run_cli("wait", job_id, "--timeout", "120", env=cli_env, timeout=140).returncode == 1
    status = store.status(job_id)
    assert status.state.value == "failed" and status.shards.failed == 2
    assert "cannot write" in status.error and "_manifest.json" in status.error
    for shard, info in store.shard_infos(job_id).items():
        assert "does not exist" in info["error"]
        assert store.attempts(job_id, shard) == 1  # one delivery, no retry
    assert sorted(store.dead_letters(job_id)) == [0, 1]
