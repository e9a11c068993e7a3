"""A write-only local file that bypasses the page cache (O_DIRECT) where the file system
allows it.

A worker writes ~1 MB of vectors a document (float16 ColBERT, 512 tokens) and never reads it
back. Through the page cache each byte is copied into kernel pages that must first be found
(evicting others once the cache is full, as it soon is on a worker) and then written back.
On the 2-core VM this was measured on, a 4,000-document `m3pipe encode` spent 7.8 s of
system CPU that way, and 0.85 s with O_DIRECT, where the disk reads straight from this
process's memory (`python -m benchmarks.bench_worker --sinks direct,cached`).

Writes are staged in page-aligned buffers and handed to the kernel in whole blocks. There are
two stages: while a thread of the file's own writes a full one (the disk reads it; the
thread waits, holding no lock), the caller fills the other, so encoding the next bytes and
writing the last ones overlap (a synchronous O_DIRECT write leaves the CPU idle for as long
as the disk takes: on the 2-core VM measured, ~half of a part writer's time). At most one
write is in flight, so they reach the file in order. The tail is written padded to a block
at close and the file cut back to its length. Where O_DIRECT is refused (a file system
without it, an odd block size) the file is written through the page cache, from the first
refusal on; `direct=False` (`M3PIPE_DIRECT_WRITES=0`) asks for that (a file system that
takes O_DIRECT but serves it slowly). Durability is unchanged: `flush` returns once every
whole block is written, and the caller fsyncs as before (O_DIRECT alone promises nothing of
the disk's cache). A write's error is raised by the next `write` that fills a stage, or by
`flush` or `close`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from pipeline.engine.host_memory import anonymous_pages

BLOCK = 4096  # O_DIRECT's alignment of addresses, offsets and lengths: any common device's
STAGE_BYTES = 8 << 20  # bytes gathered before a write: large writes keep a disk busy
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux; elsewhere every write is buffered


class DirectFile:
    """`open(path, "wb")`'s write, tell, flush, fileno and close: what pyarrow's writer and
    the part writer's syncs use."""

    def __init__(
        self, path: Path | str, stage_bytes: int = STAGE_BYTES, *, direct: bool = True
    ) -> None:
        self.name = str(path)
        self._fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        size = max(BLOCK, stage_bytes // BLOCK * BLOCK)
        self._stages = [anonymous_pages(size), anonymous_pages(size)]  # page-aligned
        self._stage = self._stages[0]  # the one being filled
        self._staged = 0  # bytes in it
        self._written = 0  # bytes handed to the kernel or in flight (whole blocks while direct)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="m3pipe-direct-io")
        self._in_flight: Future[None] | None = None  # the other stage's write
        self.direct = _O_DIRECT != 0 and direct and self._set_direct(True)
        self.closed = False

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._written + self._staged

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            room = len(self._stage) - self._staged
            take = min(room, len(view))
            self._stage[self._staged : self._staged + take] = view[:take]
            self._staged += take
            view = view[take:]
            if self._staged == len(self._stage):
                self._write_behind()
        return total

    def flush(self) -> None:
        """Write every whole block staged, and return once written (the rest waits for
        more, or close)."""
        self._wait()  # whether the file is still direct is known after the last write
        self._drain(self._staged // BLOCK * BLOCK if self.direct else self._staged)

    def close(self) -> None:
        if self.closed:
            return
        try:
            length = self.tell()
            self._wait()  # whether the file is still direct is known after the last write
            if self.direct and self._staged:  # the tail, padded to a whole block
                padded = -(-self._staged // BLOCK) * BLOCK
                self._stage[self._staged : padded] = bytes(padded - self._staged)
                self._staged = padded
            self._drain(self._staged)
            if self._written != length:
                os.ftruncate(self._fd, length)
        finally:
            self._release()

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.close()
        else:  # the file is abandoned: what is staged is not written
            self._release()

    def _release(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):  # abandoned: its write's error is moot
                self._wait()
            self._writer.shutdown()
            os.close(self._fd)
            for stage in self._stages:
                # A failed write's traceback may still view a stage: then it goes with it.
                with contextlib.suppress(BufferError):
                    stage.close()

    def _write_behind(self) -> None:
        """Hand the full stage to the file's thread and go on filling the other one."""
        self._wait()
        full, count = self._stage, self._staged
        self._in_flight = self._writer.submit(self._write_out, full, count)
        self._written += count
        self._stage = self._stages[1] if full is self._stages[0] else self._stages[0]
        self._staged = 0

    def _drain(self, count: int) -> None:
        """Write the stage's first `count` bytes now, keep what follows at its start."""
        self._wait()
        self._write_out(self._stage, count)
        self._written += count
        rest = self._staged - count
        if rest:
            self._stage.move(0, count, rest)
        self._staged = rest

    def _wait(self) -> None:
        """Until the write in flight is done; raises its error."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()

    def _write_out(self, stage: mmap.mmap, count: int) -> None:
        view = memoryview(stage)
        try:
            done = 0
            while done < count:
                try:
                    done += os.write(self._fd, view[done:count])
                except OSError as exc:
                    if not (self.direct and exc.errno == errno.EINVAL):
                        raise
                    self.direct = self._set_direct(False)  # refused: the page cache
        finally:
            view.release()

    def _set_direct(self, on: bool) -> bool:
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags | _O_DIRECT if on else flags & ~_O_DIRECT)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return False
        return on
