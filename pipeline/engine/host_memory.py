"""Large host buffers: private anonymous maps in 4 KiB pages, not inherited by a fork.

A worker fills ~1 MB of vectors a document into buffers that it uses again
(pipeline/engine/recycled.py) and writes parts from page-aligned stages
(pipeline/storage/direct_file.py). How that memory is mapped decides what its first use
costs (`python -m benchmarks.bench_fresh_memory`; AMD EPYC VM, 2 cores, a 134 MB piece's
buffer made and filled, medians of nine, 2026-12-08):

- shared anonymous memory (`mmap.mmap(-1, n)`, which these buffers were: the kernel's shmem, a
  page cache of its own): 99-129 ms;
- private, 4 KiB pages (these): 68-87 ms. A 4,000-document `m3pipe encode` on stub:full
  spent 1.40-1.95 s of system CPU against 1.78-2.13 s with shared maps (two A/Bs of three
  runs of each, alternating);
- private, transparent huge pages: 21-25 ms alone, yet the same `m3pipe encode` spent
  2.51-3.25 s of system CPU against 1.64-2.03 (and 0.5-1 s more wall time) with the pool's
  buffers in huge pages, although the kernel had ~12 GiB free in 2 MiB blocks. Not used: on a
  VM whose memory was fragmented, finding huge pages had cost ~1.6 ms of system CPU a MiB
  against ~0.45 for small pages (docs/engine.md, "Page cache, fresh memory and a process's
  start"), and in a worker's process they cost more than they save even when free. The
  likely cause (not proven): this VM reports free memory to its host ("Free page reporting
  enabled" at boot), in blocks of 2 MiB and up, which the host then takes back; a huge page
  comes from such a block and waits for the host to back it again, while small pages mostly
  come from memory freed a moment ago. The benchmark reused the same memory: no wait there.

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
