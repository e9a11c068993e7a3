"""A part file written while its shard is still computing: a row group at a time, in a
thread of its own, visible under its name only once whole and durable.

The worker hands each finished piece of a shard (its rows in input order) to `write`, which
returns at once; the thread encodes and writes it, and on a local disk syncs it, while the
device computes the next piece. `close` adds the footer facts, waits for the last bytes,
runs the fence and makes the file visible, as `write_shard` does for a whole table: a crash
at any point leaves at most a hidden temp file, never a part.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage.direct_file import DirectFile
from pipeline.storage.local_commit import commit_local
from pipeline.storage.location import Location, open_location
from pipeline.storage.sink import ROW_GROUP_ROWS, write_options

PENDING_PIECES = 2  # pieces queued for the writer at most: memory stays bounded
_PUT_WAIT_SECONDS = 0.2


class _Abort(Exception):
    """The part was abandoned before it was complete: nothing becomes visible."""


class PartWriter:
    """Writes one part file from pieces of rows; see the module's docstring."""

    def __init__(
        self,
        target: Location | Path | str,
        schema: pa.Schema,
        fence: Callable[[], None] | None = None,
        *,
        direct_writes: bool = True,
    ) -> None:
        self.location = open_location(target)
        self._direct_writes = direct_writes  # local files around the page cache (O_DIRECT)
        self.schema = schema
        self._fence = fence
        self._pieces: queue.Queue[pa.Table | dict[bytes, bytes] | None] = queue.Queue(
            PENDING_PIECES
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="m3pipe-part-writer", daemon=True)
        self._thread.start()

    def write(self, piece: pa.Table) -> None:
        """Queue `piece` (rows of `schema`, any metadata): waits only while the writer is
        PENDING_PIECES behind; raises the writer's error if it failed."""
        self._put(piece.replace_schema_metadata(self.schema.metadata))

    def close(self, footer: dict[bytes, bytes] | None = None) -> Location:
        """Add `footer` to the file's key-value metadata, finish, fence and commit."""
        self._put(dict(footer or {}))
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.location

    def abort(self) -> None:
        """Abandon the part: the thread stops and removes its temp file."""
        if self._thread.is_alive():
            while self._thread.is_alive():
                try:
                    self._pieces.put(None, timeout=_PUT_WAIT_SECONDS)
                    break
                except queue.Full:
                    continue
            self._thread.join()

    def _put(self, item: pa.Table | dict[bytes, bytes]) -> None:
        while True:
            if self._error is not None:
                raise self._error
            if not self._thread.is_alive():
                raise RuntimeError("the part writer has stopped")
            try:
                self._pieces.put(item, timeout=_PUT_WAIT_SECONDS)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            if self.location.is_local:
                commit_local(self.location.local_path, self._write_file, self._fence)
            else:
                buffer = pa.BufferOutputStream()
                self._write_pieces(buffer, sync=None)
                if self._fence is not None:
                    self._fence()
                self.location.write_bytes(buffer.getvalue())
        except _Abort:
            pass
        except BaseException as exc:  # raised to the caller by write/close
            self._error = exc
            self._drain()

    def _write_file(self, tmp: Path) -> None:
        with DirectFile(tmp, direct=self._direct_writes) as handle:
            self._write_pieces(handle, sync=handle)

    def _write_pieces(self, sink: pa.NativeFile | DirectFile, sync: DirectFile | None) -> None:
        options = dict(write_options(self.schema))
        options.pop("row_group_size")  # a write_table argument, given per piece
        with pq.ParquetWriter(sink, self.schema, **options) as writer:
            while True:
                item = self._pieces.get()
                if item is None:
                    raise _Abort
                if isinstance(item, dict):
                    if item:
                        writer.add_key_value_metadata(item)
                    return
                writer.write_table(item, row_group_size=ROW_GROUP_ROWS)
                del item  # its buffers free for the engine's next piece while we wait
                if sync is not None:  # to disk now, off the critical path: the final
                    sync.flush()  # fsync before the rename then has little left to do
                    os.fdatasync(sync.fileno())

    def _drain(self) -> None:
        """Empty the queue so that a caller blocked on it sees the error."""
        while True:
            try:
                self._pieces.get_nowait()
            except queue.Empty:
                return
