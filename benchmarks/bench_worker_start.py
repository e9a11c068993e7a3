"""How long `m3pipe worker` takes to start: from spawning the process to Celery's "ready"
line (imports, start-up checks, the pool process forked and its model loaded), against a
local Redis, each start a fresh process. What every worker the autoscaler or `m3pipe run`
starts pays before its first shard; on a 4,000-document `run` of `stub:full` it is about a
third of the wall time (docs/engine.md).

    python -m benchmarks.bench_worker_start --starts 8 --model stub:full
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import ROOT, run_facts, save
from pipeline.ops.embedded_redis import EmbeddedRedis

READY = " ready."  # Celery's line once the worker consumes


def start_seconds(env: dict[str, str], model: str, name: str, limit: float = 120.0) -> float:
    """Seconds until a new worker process says it is ready; it is killed then."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "pipeline.cli.main", "worker", "--device", "cpu",
               "--model", model, "--name", name]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if READY in line:
                return time.perf_counter() - started
            if time.perf_counter() - started > limit:
                break
        raise RuntimeError(f"worker {name} never said it was ready (exit {proc.poll()})")
    finally:
        with contextlib.suppress(ProcessLookupError):  # the pool process too: its own group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=8, help="worker processes started")
    parser.add_argument("--model", default="stub:full", help="the model the worker preloads")
    parser.add_argument("--out", type=Path, help="save the JSON here (default: .results/)")
    args = parser.parse_args(argv)
    with EmbeddedRedis() as redis:
        env = {**os.environ, "M3PIPE_BROKER_URL": redis.url, "HF_HUB_OFFLINE": "1",
               "M3PIPE_METRICS_PORT": "0"}  # fmt: skip
        seconds = [start_seconds(env, args.model, f"start{i}@bench") for i in range(args.starts)]
    report = {
        "model": args.model,
        "starts": args.starts,
        "seconds_each": [round(s, 3) for s in seconds],
        "median_seconds": round(statistics.median(seconds), 3),
        **run_facts(),
    }
    print(f"worker start to ready: median {report['median_seconds']} s over {args.starts}")
    save(report, "worker-start", "cpu", args.model, args.out)


if __name__ == "__main__":
    main()
