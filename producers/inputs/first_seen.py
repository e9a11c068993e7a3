"""Where each key (a document id, a pair) was first seen: on disk, memory bounded.

The duplicate policies ("the first record wins, later ones are rejected naming the first")
need every key seen so far. A dict of them costs ~190 bytes per document: 190 GB at 10^9.
The keys live instead in a throwaway RocksDB under the temp directory: memory is its write
buffers and block cache (bounded: see the constants), the rest is on disk (~25 bytes per
key after compression; 25 GB at 10^9 keys). Bloom filters make a lookup of a new key,
the common case, cost no disk read. docs/scale.md has the measured figures.

Set TMPDIR to put the index on a disk with room: a full disk fails the submission with
RocksDB's error, never silently.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from rocksdict import (
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteOptions,
)

WRITE_BUFFER_BYTES = 16 << 20  # per memtable; at most two in memory
BLOCK_CACHE_BYTES = 32 << 20  # data, index and filter blocks read back
BLOOM_BITS_PER_KEY = 10  # ~1% of lookups of a new key read a block from disk


class FirstSeen:
    """`first(key, where)`: None the first time a key is offered (it is remembered with
    `where`), else the `where` it was first offered with. Use as a context manager: the
    index is deleted on exit."""

    def __init__(
        self, parent: Path | str | None = None, write_buffer_bytes: int = WRITE_BUFFER_BYTES
    ) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="m3pipe-first-seen-", dir=parent))
        self._db: Rdict | None = None
        try:
            self._db = Rdict(str(self._dir), _options(write_buffer_bytes))
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        writes = WriteOptions()
        # A throwaway index: no write-ahead log (nothing to recover after a crash). The
        # attribute is a property; rocksdict's stub wrongly declares a method.
        writes.disable_wal = True  # type: ignore[method-assign,assignment]
        self._db.set_write_options(writes)

    def first(self, key: str, where: str) -> str | None:
        db = self._db
        if db is None:
            raise ValueError("FirstSeen is closed")
        raw = key.encode("utf-8", "surrogatepass")
        found = db.get(raw)
        if found is None:
            db.put(raw, where.encode("utf-8", "surrogatepass"))
            return None
        return bytes(found).decode("utf-8", "surrogatepass")

    @property
    def directory(self) -> Path:
        return self._dir

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FirstSeen:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


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
    options.set_max_write_buffer_number(2)
    options.set_compression_type(DBCompressionType.lz4())
    options.set_max_background_jobs(2)
    options.set_keep_log_file_num(1)
    return options
