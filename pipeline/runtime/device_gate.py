"""One shard's device work at a time among a worker's slots.

A worker with `--slots 2` runs two pool processes on one device, each with its own shard
(its own message, acknowledged on its own: exactly-once is per slot as before). While one
slot's batches run on the device, the other reads its input, tokenizes, writes its part,
fsyncs and records its state: the host work of a shard, and the gap between two shards,
leave the device busy with the other slot's shard.

The gate is an exclusive `flock` on a file the worker names for its slots: the kernel
drops it when the process holding it dies, so a slot killed mid-batch (kill -9, an
out-of-memory kill) never leaves the other waiting. Each process opens the file itself:
`flock` excludes open file descriptions, and one inherited through fork would be shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator

GATE_FILE_ENV = "M3PIPE_DEVICE_GATE_FILE"


class DeviceGate:
    """`with gate():` holds the device for the block. `waited` adds up the seconds spent
    waiting for it (the other slot's device time seen from here)."""

    def __init__(self, path: str, on_wait: Callable[[float], None] | None = None) -> None:
        self.path = path
        self._fd: int | None = None
        self._threads = threading.Lock()  # flock does not exclude threads of one process
        self._on_wait = on_wait
        self.waited = 0.0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._threads:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            started = time.perf_counter()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            waited = time.perf_counter() - started
            self.waited += waited
            if self._on_wait is not None:
                self._on_wait(waited)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def gate_from_environment(
    on_wait: Callable[[float], None] | None = None,
) -> DeviceGate | None:
    """The gate `m3pipe worker` named for its slots, or None (one slot: nothing to share)."""
    path = os.environ.get(GATE_FILE_ENV)
    return DeviceGate(path, on_wait) if path else None
