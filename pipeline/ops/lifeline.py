"""Child processes that die with their parent, and scratch directories a killed parent left.

`m3pipe run` (and `autoscale`) start Redis and workers; if the parent is killed outright
(`kill -9`, the OOM killer) nothing of it may linger: each child asks the kernel for a
signal when its parent dies (Linux PR_SET_PDEATHSIG). A scratch directory records its
owner, so the next run removes the ones whose owner is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1
OWNER_FILE = ".owner"


def set_parent_death_signal(signum: int) -> None:
    """Ask for `signum` when the parent dies (a no-op where Linux prctl is missing)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def dies_with_parent(signum: int = signal.SIGKILL) -> Callable[[], None]:
    """A Popen `preexec_fn`: the child gets `signum` when the process starting it dies."""
    parent = os.getpid()

    def arrange() -> None:
        set_parent_death_signal(signum)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signum)

    return arrange


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owned_scratch_dir(prefix: str) -> Path:
    """A new temp directory that names its owner (this process), for `remove_stale`."""
    remove_stale_scratch(prefix)
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    pid = os.getpid()
    (directory / OWNER_FILE).write_text(f"{pid} {_start_time(pid)}\n")
    return directory


def remove_stale_scratch(prefix: str) -> list[Path]:
    """Remove `prefix*` temp directories whose owner process no longer runs."""
    removed = []
    for directory in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        owner = directory / OWNER_FILE
        try:
            pid_text, started = owner.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        if _start_time(pid) == started:
            continue  # the owner still runs
        with contextlib.suppress(OSError):
            shutil.rmtree(directory)
            removed.append(directory)
    return removed
