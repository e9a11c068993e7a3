"""Large host arrays whose memory is used again once nothing refers to them any more.

A worker fills ~1 MB of ColBERT vectors a document (float16, 512 tokens). Memory fresh from
the system costs a page fault per 4 KiB page on its first write: placing vectors in new
arrays took ~2.5x as long as the copy itself (ShardColumns.add was the worker's largest host
step in `benchmarks/bench_worker.py`). The engine takes its ColBERT arrays from here instead.

A buffer is handed out again only when nothing else holds it: no array view, Arrow table or
writer thread (CPython's reference count says so, and nothing can take a new reference to a
buffer that nobody holds). So a table that a caller keeps is never overwritten; it only keeps
its buffer out of the pool for as long as it lives.

Pieces of a shard differ in size (its first and last are a quarter of the others), so a
request takes the smallest free buffer that holds it, however much larger, and a new buffer
is made as large as the largest kept: after the first few pieces every buffer holds any
piece, and no piece meets fresh memory. (Lending only buffers at most twice a request's size
made 26 of 40 pieces fresh in a 4,000-document `m3pipe encode`, 2.9 GB of page faults against
0.7 GB now: docs/engine.md, "Page cache, fresh memory and a process's start".) What is kept
stays bounded: `keep` buffers, each the size of the largest piece met, which is what that
many pieces in flight hold anyway.

Buffers are private anonymous maps in 4 KiB pages, not numpy's memory (which asks for
transparent huge pages), and a fork does not inherit them (pipeline/engine/host_memory.py says
why, with the figures). Only a buffer's first use faults; copying into it afterwards is as fast.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import numpy.typing as npt

from pipeline.engine.host_memory import anonymous_pages

_ALIGN = 2 << 20  # buffer sizes are whole MiBs (2): fewer sizes, fewer buffers made
_HEADROOM = 1.25  # a new buffer has room for somewhat larger requests after it


class RecycledBuffers:
    """At most `keep` buffers, each lent out as one array at a time."""

    def __init__(self, keep: int = 3) -> None:
        self.keep = keep
        self._buffers: list[np.ndarray] = []  # uint8 bases of what was handed out
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        """An uninitialised array of `shape`, in the smallest free buffer large enough,
        else in a new one."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        with self._lock:
            buffer = self._take(nbytes)
        return buffer[:nbytes].view(dtype).reshape(shape)

    def held_bytes(self) -> int:
        """Bytes of the buffers kept (lent out or free)."""
        with self._lock:
            return sum(buffer.nbytes for buffer in self._buffers)

    def _take(self, nbytes: int) -> np.ndarray:
        free = [i for i in range(len(self._buffers)) if not self._lent(i)]
        fitting = [i for i in free if nbytes <= self._buffers[i].nbytes]
        if fitting:
            return self._buffers[min(fitting, key=lambda i: self._buffers[i].nbytes)]
        largest = max((buffer.nbytes for buffer in self._buffers), default=0)
        size = max(math.ceil(nbytes * _HEADROOM / _ALIGN) * _ALIGN if nbytes else 0, largest)
        buffer = np.frombuffer(anonymous_pages(size), np.uint8) if size else np.empty(0, np.uint8)
        if len(self._buffers) >= self.keep:
            if not free:  # every kept buffer is lent out: this one is not kept
                return buffer
            # The free ones are all too small: the smallest gives way.
            del self._buffers[min(free, key=lambda i: self._buffers[i].nbytes)]
        self._buffers.append(buffer)
        return buffer

    def _lent(self, index: int) -> bool:
        # Two references when free: the list's, and getrefcount's own argument.
        return sys.getrefcount(self._buffers[index]) > 2
