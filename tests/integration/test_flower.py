"""`m3pipe flower` against the test Redis: workers and a job's finished tasks in its API."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.integration.conftest import corpus_records, run_cli, wait_until, write_jsonl
from tests.integration.test_redis_auth import free_port

AUTH = "admin:flower-pw"


def get(url: str, auth: str | None = AUTH) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except urllib.error.URLError:
        return 0, ""  # not listening (yet)


def test_flower_lists_workers_and_readable_finished_tasks(tmp_path, cli_env, workers, store):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "flower.log"
    with open(log_path, "w") as log:
        flower = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "flower", "--port", str(port)],
            env={**cli_env, "M3PIPE_FLOWER_BASIC_AUTH": AUTH},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: get(f"{base}/healthcheck")[0] == 200, 60, 0.3, "Flower never answered")
        [name] = workers.start(1)
        corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(20))
        out = str(tmp_path / "out")
        submitted = run_cli("submit", str(corpus), "--out", out, "--shard-docs", "10", env=cli_env)
        job_id = submitted.stdout.strip().splitlines()[-1]
        assert run_cli("wait", job_id, "--timeout", "120", env=cli_env, timeout=140).returncode == 0

        def finished_tasks():
            tasks = json.loads(get(f"{base}/api/tasks")[1])
            ours = {tid: t for tid, t in tasks.items() if tid.startswith(job_id)}
            done = len(ours) == 2 and all(t["state"] == "SUCCESS" for t in ours.values())
            return ours if done else None

        tasks = wait_until(finished_tasks, 60, 0.3, "Flower never saw both tasks succeed")
        first = tasks[f"{job_id}-00000"]
        assert first["name"] == "m3pipe.encode_shard" and first["worker"] == name
        assert first["args"] == f"job={job_id} shard=0 docs=10 (by reference)"  # no text
        workers_seen = wait_until(
            lambda: json.loads(get(f"{base}/api/workers?refresh=1")[1]), 60, 0.3, "no workers"
        )
        assert name in workers_seen
        assert get(f"{base}/api/tasks", auth=None)[0] == 401
        assert get(f"{base}/api/tasks", auth="admin:wrong")[0] == 401
        status, metrics = get(f"{base}/metrics")
        assert status == 200 and "flower_events_total" in metrics
        cmdline = Path(f"/proc/{flower.pid}/cmdline").read_text()
        assert AUTH.split(":")[1] not in cmdline  # the password is not on the command line
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(timeout=30)
