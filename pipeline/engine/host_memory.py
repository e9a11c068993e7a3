"""Large host buffers: private anonymous maps in 4 KiB pages, not inherited by a fork.

A worker fills ~1 MB of vectors a document into buffers that it uses again
(pipeline/engine/recycled.py) and writes parts from page-aligned stages
(pipeline/storage/direct_file.py). How that memory is mapped decides what its first use
costs (`python -m benchmarks.bench_fresh_memory`; AMD EPYC VM, 2 cores, a 134 MB piece's
buffer made and filled, medians of nine, 2026-12-08):

- shared anonymous memory (`mmap.mmap(-1, n)`, which these buffers were: the kernel's shmem, a
  page cache of its own): 88-129 ms;
- private, 4 KiB pages (these): 57-87 ms. A 4,000-document `m3pipe encode` on stub:full
  spent 1.40-1.95 s of system CPU against 1.78-2.13 s with shared maps (two A/Bs of three
  runs of each, alternating);
- private, transparent huge pages: 19-25 ms when the memory was freed a moment before, but
  297-314 ms each for six buffers kept alive in a fresh process after 20 s with nothing
  running (numpy's memory, which asks for huge pages: 293-327 ms; small pages 59-66 ms; shared
  83-110 ms). A 4,000-document `m3pipe encode` with the pool's buffers in huge pages spent
  2.51-3.25 s of system CPU against 1.64-2.03 (and 0.5-1 s more wall time), though the kernel
  had ~12 GiB free in 2 MiB blocks. This VM reports free memory to its host ("Free page
  reporting enabled" at boot) in blocks of 2 MiB and up, which fits: memory that sat free is
  taken back by the host, a huge page comes from such a block and waits for the host to back
  it again, and small pages mostly come from lower-order free lists never handed back. (On
  a VM whose memory was fragmented, finding huge pages had also cost ~1.6 ms of system CPU a
  MiB against ~0.45 for small pages: docs/engine.md, "Page cache, fresh memory and a
  process's start".)

Not inherited by a fork: no child needs them, and a fork would make every later write to them a
copy-on-write fault.
"""

from __future__ import annotations

import mmap


def anonymous_pages(size: int) -> mmap.mmap:
    """`size` bytes of private anonymous memory in 4 KiB pages, zero-filled on first use, not
    inherited by a fork (see the module's docstring)."""
    pages = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for advice in ("MADV_NOHUGEPAGE", "MADV_DONTFORK"):
        if hasattr(mmap, advice):  # Linux; elsewhere the memory is as the system gives it
            pages.madvise(getattr(mmap, advice))
    return pages
