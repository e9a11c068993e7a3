"""A throwaway RocksDB under the temp directory: the producer's on-disk scratch space.

Memory is its write buffers and block cache (bounded by the constants below); the rest is on
disk. Bloom filters make a lookup of a missing key, the common case, cost no disk read.
Partitioned index and filter blocks are charged to the cache, so they do not grow with the
keys either. docs/scale.md has the measured figures.

Set TMPDIR to put it on a disk with room: a full disk fails the submission with one error
naming the directory (ScratchSpaceError), never silently, and the directory is removed. A
TMPDIR that is not a writable directory is refused, not replaced by /tmp behind the user's
back (Python's tempfile would fall back silently).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from rocksdict import (
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

from pipeline.errors import PipelineError, ScratchSpaceError

WRITE_BUFFER_BYTES = 16 << 20  # per memtable; at most two in memory
BLOCK_CACHE_BYTES = 32 << 20  # data, index and filter blocks read back
BLOOM_BITS_PER_KEY = 10  # ~1% of lookups of a missing key read a block from disk


class ScratchDb:
    """A throwaway RocksDB under the temp directory (`parent`), deleted on close: bytes
    keys and values, memory bounded by the constants above, no write-ahead log."""

    def __init__(
        self,
        prefix: str,
        parent: Path | str | None = None,
        write_buffer_bytes: int = WRITE_BUFFER_BYTES,
    ) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_parent(parent)))
        self._db: Rdict | None = None
        try:
            with self._failures("open"):
                self._db = Rdict(str(self.directory), _options(write_buffer_bytes))
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        writes = WriteOptions()
        # Nothing to recover after a crash: no write-ahead log. The attribute is a
        # property; rocksdict's stub wrongly declares a method.
        writes.disable_wal = True  # type: ignore[method-assign,assignment]
        self._db.set_write_options(writes)

    @property
    def db(self) -> Rdict:
        if self._db is None:
            raise ValueError(f"{self.directory} is closed")
        return self._db

    def write(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """Put many keys in one write (several times faster than one put each)."""
        batch = WriteBatch(raw_mode=True)
        for key, value in pairs:
            batch.put(key, value)
        with self._failures("write"):
            self.db.write(batch)

    def close(self) -> None:
        """Close and delete; a failure while closing (a full disk) is nobody's concern now:
        the directory goes whatever happens."""
        try:
            if self._db is not None:
                db, self._db = self._db, None
                with contextlib.suppress(Exception):
                    db.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    @contextlib.contextmanager
    def _failures(self, doing: str) -> Iterator[None]:
        """RocksDB's errors (a bare Exception: "IO error: No space left on device") as one
        ScratchSpaceError that names where and what to do."""
        try:
            yield
        except (PipelineError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:
            raise ScratchSpaceError(
                f"the scratch index in {self.directory.parent} failed to {doing}: {exc} "
                "(a full disk? set TMPDIR to a directory on a disk with room)"
            ) from exc


class ScratchIndex:
    """An index kept in a ScratchDb (`_scratch`): use as a context manager, deleted on exit."""

    _scratch: ScratchDb

    def close(self) -> None:
        self._scratch.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def scratch_parent(parent: Path | str | None) -> Path:
    """Where scratch directories go: `parent`, else $TMPDIR when set (refused, not silently
    replaced by /tmp, when it is not a writable directory), else the system's temp dir."""
    if parent is not None:
        return Path(parent)
    configured = os.environ.get("TMPDIR")
    if not configured:
        return Path(tempfile.gettempdir())
    where = Path(configured)
    if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
        raise ScratchSpaceError(
            f"TMPDIR={configured} is not a writable directory: the producer keeps its "
            "scratch index (duplicate ids, --reuse) there; point TMPDIR at a directory on a "
            "disk with room"
        )
    return where


def _options(write_buffer_bytes: int) -> Options:
    options = Options(raw_mode=True)  # bytes in, bytes out: no pickling
    options.create_if_missing(True)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
    # Index and filter blocks count against the cache (else they grow with the keys).
    # Partitioned: a lookup loads only the index and filter partitions it needs.
    table.set_index_type(BlockBasedIndexType.two_level_index_search())
    table.set_partition_filters(True)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_top_level_index_and_filter(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
    options.set_block_based_table_factory(table)
    options.set_write_buffer_size(write_buffer_bytes)
    # A bloom filter over each memtable's keys too (a tenth of its size): a missing key is
    # then not searched for in the skiplist (1.29 -> 0.94 us a key, 2x10^6 ids, batched).
    options.set_memtable_prefix_bloom_ratio(0.1)
    options.set_memtable_whole_key_filtering(True)
    options.set_max_write_buffer_number(2)
    options.set_compression_type(DBCompressionType.lz4())
    options.set_max_background_jobs(2)
    options.set_keep_log_file_num(1)
    return options
