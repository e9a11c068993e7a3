"""A local file made visible whole or not at all: written under a hidden temp name, fsynced,
renamed, its directory fsynced."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def local_temp_name(path: Path) -> Path:
    """The hidden name a local write goes to before its rename: `.NAME.tmp-PID-RANDOM`."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def commit_local(
    path: Path, write: Callable[[Path], object], fence: Callable[[], None] | None = None
) -> None:
    """`write(tmp)` to a hidden temp file, fsync it, rename it to `path`: whole or nothing.

    A crash leaves at most the temp file, which readers skip (leading dot) and the job's
    end removes (see pipeline/storage/sink.py). `fence()` runs just before the rename and may
    raise to stop it (a stale attempt must not replace a committed file).
    """
    tmp = local_temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        if fence is not None:
            fence()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_local_atomic(path: Path, data: bytes | pa.Buffer) -> None:
    commit_local(path, lambda tmp: tmp.write_bytes(memoryview(data)))
