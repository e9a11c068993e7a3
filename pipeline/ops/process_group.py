"""Stopping child processes started in their own sessions (Celery workers and their pools)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable


def stop_process_groups(processes: Iterable[subprocess.Popen], grace_seconds: float) -> None:
    """SIGTERM each group (a Celery warm shutdown), then SIGKILL whatever is left of it."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_seconds)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # pool children left behind, if any
        process.wait()


def kill_process_groups(processes: Iterable[subprocess.Popen]) -> None:
    """SIGKILL each group now: for processes that hold nothing worth a warm shutdown."""
    processes = list(processes)
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    for process in processes:
        process.wait()
