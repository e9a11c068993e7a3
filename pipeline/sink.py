"""The Parquet sink: one shard's table to one file, atomically."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP_ROWS = 1024  # ColBERT rows are large: keep row groups readable piecewise


def part_name(shard_index: int) -> str:
    """Deterministic file name of a shard's output."""
    if shard_index < 0:
        raise ValueError("shard index must be >= 0")
    return f"part-{shard_index:05d}.parquet"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_shard(table: pa.Table, path: Path) -> Path:
    """Write `table` to `path` via a hidden temp file and rename.

    Nothing partial ever appears under the final name: a crash leaves at most a
    `.part-*.tmp-*` file, which readers ignore and a rerun removes.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            row_group_size=ROW_GROUP_ROWS,
            store_schema=True,
        )
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temp_files(directory: Path) -> int:
    """Delete temp files left by interrupted writes; returns how many went."""
    removed = 0
    for stale in Path(directory).glob(".part-*.parquet.tmp-*"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed
