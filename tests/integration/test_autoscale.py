"""`m3pipe autoscale --devices cpu:2` follows a real backlog up to two workers and back to zero."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds

from tests.integration.conftest import run_cli, slow_stub, write_jsonl
from tests.integration.test_metrics import scrape
from tests.integration.test_redis_auth import free_port

SHARDS = 20


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def test_autoscaler_starts_two_workers_finishes_the_job_and_scales_to_zero(
    tmp_path, cli_env, stub_built, store
):
    from pipeline.engine.synthetic_text import TextGenerator

    slow_stub(cli_env, stub_built, 5000)  # ~0.6 s a shard of three ~900-token documents
    gen = TextGenerator(5)
    records = [{"id": f"doc-{i:03d}", "text": gen.document(200)} for i in range(SHARDS * 3)]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    submitted = run_cli(
        "submit", str(corpus), "--out", str(tmp_path / "out"), "--shard-docs", "3",
        "--max-queued", "100", env=cli_env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert store.status(job_id).shards.queued == SHARDS  # the backlog, before any worker

    metrics_port = free_port()
    log_path = tmp_path / "autoscale.log"
    with open(log_path, "w") as log:
        scaler = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "autoscale", "--devices", "cpu:2",
             "--shards-per-worker", "5", "--cooldown", "0.5", "--poll", "0.2",
             "--log-dir", str(tmp_path / "worker-logs"), "--metrics-port", str(metrics_port),
             "--worker-metrics-port", "0"],
            env=cli_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        most = 0
        deadline = time.monotonic() + 300
        while not store.status(job_id).state.finished:
            assert time.monotonic() < deadline, log_path.read_text()
            assert scaler.poll() is None, log_path.read_text()
            most = max(most, len(children(scaler.pid)))
            time.sleep(0.1)
        assert store.status(job_id).state.value == "completed"
        # Back to zero once the cooldown has passed with nothing to do.
        deadline = time.monotonic() + 60
        while children(scaler.pid):
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        time.sleep(0.5)  # one more poll records the final state
        metrics = scrape(metrics_port)
        assert metrics[("m3pipe_autoscaler_workers_started_total", ())] == 2
        assert metrics[("m3pipe_autoscaler_workers_died_total", ())] == 0
        assert metrics[("m3pipe_autoscaler_backlog", (("queue", "m3pipe"),))] == 0
        assert metrics[("m3pipe_autoscaler_desired_workers", ())] == 0
        assert metrics[("m3pipe_autoscaler_running_workers", ())] == 0
    finally:
        scaler.send_signal(signal.SIGTERM)
        assert scaler.wait(timeout=120) == 0
    text = log_path.read_text()
    assert most == 2, text  # never above the devices
    assert len(re.findall(r"started worker", text)) >= 2
    # 20 shards / 5 per worker wants 4; capped at 2. As the backlog fell under 5 one worker
    # was stopped while the other still worked: warm shutdown, so nothing was lost.
    assert re.search(r"backlog [1-5]: 2 -> 1 workers", text), text
    assert "exited on its own" not in text
    ids = ds.dataset(tmp_path / "out", format="parquet").to_table(columns=["id"])
    assert sorted(ids.column("id").to_pylist()) == [r["id"] for r in records]
    status = store.status(job_id)
    assert status.documents_done == len(records) and status.shards.done == SHARDS
