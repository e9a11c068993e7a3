"""Starting one `m3pipe worker` child process: own process group, log file, CPU share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.ops.lifeline import dies_with_parent


def threads_each(processes: int) -> int:
    """Torch's threads for each of `processes` that share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // processes)


def spawn_worker(
    device: str,
    name: str,
    env: dict[str, str],
    log: Path,
    *,
    cpu_workers: int = 1,
    queues: str | None = None,
    metrics_port: int | None = None,
) -> subprocess.Popen[bytes]:
    """`m3pipe worker --device DEVICE --name NAME`, in its own session, logging to `log`.

    `cpu_workers` CPU workers on one machine share its cores instead of each using all.
    """
    worker_env = dict(env)
    if device == "cpu" and cpu_workers > 1:
        worker_env.setdefault("OMP_NUM_THREADS", str(threads_each(cpu_workers)))
    command = [
        sys.executable,
        "-m",
        "pipeline.cli.main",
        "worker",
        "--device",
        device,
        "--name",
        name,
    ]
    if queues:
        command += ["--queues", queues]
    if metrics_port is not None:
        command += ["--metrics-port", str(metrics_port)]
    with open(log, "ab") as handle:
        return subprocess.Popen(
            command,
            env=worker_env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Killed with its parent (`m3pipe run`, `autoscale`); its pool follows it
            # (workers/bootstrap.py). An unacknowledged shard is redelivered as after a crash.
            preexec_fn=dies_with_parent(signal.SIGKILL),
        )
