"""`m3pipe probe` tells a wedged worker (pool process stuck mid-shard) from a healthy one."""

from __future__ import annotations

import os
import signal
import time

from pipeline.keys import worker_key
from tests.integration.conftest import run_cli, write_jsonl


def test_probe_catches_a_wedged_pool_process_that_a_ping_misses(tmp_path, cli_env, workers, store):
    [name] = workers.start(1)
    healthy = run_cli("probe", "--name", name, env=cli_env)
    assert healthy.returncode == 0, healthy.stderr
    missing = run_cli("probe", "--name", "nobody@nowhere", "--ping-timeout", "0", env=cli_env)
    assert missing.returncode == 1 and "no record of worker" in missing.stderr

    from pipeline.synthetic_text import TextGenerator

    gen = TextGenerator(2)
    records = [{"id": f"d{i}", "text": gen.document(3000)} for i in range(12)]
    corpus = write_jsonl(tmp_path / "c.jsonl", records)
    out = str(tmp_path / "out")
    submitted = run_cli("submit", str(corpus), "--out", out, "--shard-docs", "12", env=cli_env)
    job_id = submitted.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 120
    while "shard" not in store.worker_record(name):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pool_pid = int(store.redis.hget(worker_key(name), "pid"))
    os.kill(pool_pid, signal.SIGSTOP)  # the pool process hangs mid-shard
    try:
        time.sleep(2.5)
        wedged = run_cli("probe", "--name", name, "--max-shard-seconds", "2", env=cli_env)
        assert wedged.returncode == 1 and "wedged" in wedged.stderr, wedged.stderr
        # A ping alone says all is well: the main process still answers.
        pinged = run_cli("probe", "--name", name, "--max-shard-seconds", "3600", env=cli_env)
        assert pinged.returncode == 0, pinged.stderr
    finally:
        os.kill(pool_pid, signal.SIGCONT)
    assert run_cli("wait", job_id, "--timeout", "120", env=cli_env, timeout=140).returncode == 0
    assert "shard" not in store.worker_record(name)  # idle again
    assert run_cli("probe", "--name", name, "--max-shard-seconds", "2", env=cli_env).returncode == 0
