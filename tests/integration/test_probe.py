"""`m3pipe probe` tells a wedged worker (pool process stuck mid-shard) from a healthy one."""

from __future__ import annotations

import os
import signal
import time

from pipeline.jobs.keys import worker_key
from tests.integration.conftest import run_cli, slow_stub, write_jsonl


def test_probe_catches_a_wedged_pool_process_that_a_ping_misses(
    tmp_path, cli_env, stub_built, workers, store
):
    slow_stub(cli_env, stub_built, 5000)  # the shard (~17,000 tokens) lasts ~3.5 s
    [name] = workers.start(1)
    healthy = run_cli("probe", "--name", name, env=cli_env)
    assert healthy.returncode == 0, healthy.stderr
    missing = run_cli("probe", "--name", "nobody@nowhere", "--ping-timeout", "0", env=cli_env)
    assert missing.returncode == 1 and "no record of worker" in missing.stderr

    from pipeline.engine.synthetic_text import TextGenerator

    gen = TextGenerator(2)
    records = [{"id": f"d{i}", "text": gen.document(300)} for i in range(12)]
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


def test_backlog_command_prints_json_and_refuses_a_taken_port(cli_env, store):
    import json
    import socket

    store.redis.rpush("m3pipe", "x")
    printed = run_cli("backlog", env=cli_env)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["queues"]["m3pipe"] == {
        "queued": 1, "in_flight": 0, "total": 1
    }  # fmt: skip
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        served = run_cli("backlog", "--serve", str(port), "--address", "127.0.0.1", env=cli_env)
    assert served.returncode == 1 and "cannot listen on 127.0.0.1" in served.stderr
    assert run_cli("backlog", "--queues", "bad name", env=cli_env).returncode == 2
