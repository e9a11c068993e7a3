"""Redis restarted mid-job (AOF on): producer, workers and `wait` ride it out, nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds

from tests.integration.conftest import corpus_records, run_cli, slow_stub, write_jsonl

SHARDS = 24


def cli(*args: str, env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_for_socket(pid: int, deadline: float) -> None:
    """Until process `pid` holds a socket: `m3pipe wait` opens none but its Redis one."""

    def holds_socket() -> bool:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd).startswith("socket:"):
                    return True
            except OSError:  # closed meanwhile
                continue
        return False

    while not holds_socket():
        assert time.monotonic() < deadline, "`m3pipe wait` never connected to Redis"
        time.sleep(0.05)


def completed_or_recovered(job_id: str, tmp_path: Path, env: dict) -> bool:
    """False once the job completes. True if it had to be recovered: a worker's BRPOP may
    have taken a message just as Redis stopped (kombu pops it, then records it as
    unacknowledged: Redis going away in between loses it). `status` then names that shard
    orphaned, and `cancel` + `submit --resume` redoes it alone (docs/reliability.md)."""
    deadline = time.monotonic() + 400
    while True:
        status = json.loads(run_cli("status", job_id, "--json", env=env).stdout)
        if status["state"] == "completed":
            return False
        orphans = status["orphaned"]
        if orphans and status["shards"]["done"] + len(orphans) == SHARDS:
            assert len(orphans) == 1  # at most the message in flight when Redis stopped
            assert run_cli("cancel", job_id, env=env).returncode == 0
            resumed = run_cli(
                "submit", str(tmp_path / "corpus.jsonl"), "--out", str(tmp_path / "out"),
                "--shard-docs", "5", "--max-queued", "3", "--resume", env=env,
            )  # fmt: skip
            assert resumed.returncode == 0, resumed.stderr
            assert run_cli("wait", job_id, "--timeout", "300", env=env).returncode == 0
            return True
        assert time.monotonic() < deadline, status
        time.sleep(1)


def test_redis_restart_mid_job_every_id_exactly_once(
    tmp_path, cli_env, stub_built, workers, store, redis_server
):
    # A shard whose acknowledgement was lost with the connection comes back after the
    # visibility timeout; keep it short, and shards small enough to fit it.
    cli_env.update(M3PIPE_VISIBILITY_TIMEOUT="15", M3PIPE_PLANNED_TOKENS_PER_SECOND="8000")
    slow_stub(cli_env, stub_built, 500)  # ~1 s a shard of five ~90-token documents
    records = corpus_records(SHARDS * 5, long=False)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    out = tmp_path / "out"
    names = workers.start(2)

    producer_log = open(tmp_path / "producer.log", "w+")  # noqa: SIM115
    producer = cli(
        "submit", str(corpus), "--out", str(out), "--shard-docs", "5", "--max-queued", "3",
        env=cli_env, log=producer_log,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not store.job_ids() or store.status(store.job_ids()[0]).shards.done < 3:
        assert time.monotonic() < deadline and producer.poll() is None
        time.sleep(0.05)
    job_id = store.job_ids()[0]
    waiter_log = open(tmp_path / "wait.log", "w+")  # noqa: SIM115
    waiter = cli("wait", job_id, "--timeout", "400", env=cli_env, log=waiter_log)
    # `wait` must be connected before Redis goes (a first connection fails at once, by
    # design): on a loaded machine its start-up alone can take seconds.
    wait_for_socket(waiter.pid, deadline=time.monotonic() + 60)
    time.sleep(1.0)  # and polling

    # The producer is still cutting shards (at most 3 queued): the restart hits it too.
    assert store.status(job_id).submitted is False
    redis_server.stop()  # SHUTDOWN: Redis writes its AOF and exits
    time.sleep(3)
    redis_server.start()  # same directory and socket: the AOF is loaded back

    assert producer.wait(timeout=400) == 0, producer_log.seek(0) or producer_log.read()
    if completed_or_recovered(job_id, tmp_path, cli_env):
        waiter.kill()  # it followed the cancelled job; the resumed one was waited for
        waiter.wait()
    else:
        assert waiter.wait(timeout=420) == 0, waiter_log.seek(0) or waiter_log.read()
    status = store.status(job_id)
    assert status.state.value == "completed" and status.shards.done == SHARDS
    ids = ds.dataset(out, format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(r["id"] for r in records)  # every id exactly once
    assert status.documents_done == len(records)  # counted once
    # Both workers saw the connection drop and carried on.
    for name in names:
        assert "Connection to broker lost" in workers.log(name), workers.log(name)[-2000:]
