"""What a host buffer's first use costs, and each later one, by the kind of memory it is: a
buffer of a worker's piece (128 documents of 512-token ColBERT vectors at float16: 134 MB, in
a buffer with the recycling pool's headroom) made and filled, then filled again, as the engine
fills the buffers it uses again (pipeline/engine/recycled.py). Ways, interleaved --repeats
times, medians of wall and CPU:

- shared: `mmap.mmap(-1, n)`, anonymous shared memory (the kernel's shmem);
- small pages: a private anonymous map in 4 KiB pages (MADV_NOHUGEPAGE);
- huge pages: a private anonymous map in transparent huge pages (MADV_HUGEPAGE);
- numpy: `np.empty(n)` (glibc's malloc; numpy asks for huge pages);
- m3pipe: `anonymous_pages(n)` (pipeline/engine/host_memory.py: private, 4 KiB pages, not
  inherited by a fork).

Each buffer is unmapped after its fills, so every first fill meets fresh memory, but memory
freed a moment before. Then, as a worker's pool does, --kept buffers kept alive, each way in a
process of its own started after --idle seconds with nothing running: memory that has sat
free, which a VM reporting free pages to its host has handed back (host_memory.py's
docstring). The free memory in blocks of a huge page or more (/proc/buddyinfo) is reported.

    python -m benchmarks.bench_fresh_memory --megabytes 134 --repeats 9 --kept 6 --idle 20
"""

from __future__ import annotations

import argparse
import json
import mmap
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import run_facts, save

HEADROOM = 1.25  # the pool's: a new buffer has room for somewhat larger requests


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _private(advice: str) -> Callable[[int], mmap.mmap]:
    def make(size: int) -> mmap.mmap:
        pages = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, advice):
            pages.madvise(getattr(mmap, advice))
        return pages

    return make


def ways() -> dict[str, Callable[[int], Any]]:
    from pipeline.engine.host_memory import anonymous_pages

    return {
        "shared": lambda size: mmap.mmap(-1, size),
        "small pages": _private("MADV_NOHUGEPAGE"),
        "huge pages": _private("MADV_HUGEPAGE"),
        "numpy": lambda size: np.empty(size, np.uint8),
        "m3pipe": anonymous_pages,
    }


def made_and_filled(make: Callable[[int], Any], source: np.ndarray) -> tuple[Any, np.ndarray]:
    """A buffer made `make`'s way with the pool's headroom, `source` copied into it: the
    buffer and its bytes as an array."""
    buffer = make(int(source.nbytes * HEADROOM))
    array = np.frombuffer(buffer, np.uint8) if isinstance(buffer, mmap.mmap) else buffer
    array[: source.nbytes] = source
    return buffer, array


def fill_once(make: Callable[[int], Any], source: np.ndarray) -> tuple[float, float, float]:
    """(wall, CPU) seconds to make a buffer and copy `source` into it, and the wall seconds
    of a second copy into it; then it is freed."""
    wall, cpu = time.perf_counter(), _cpu()
    buffer, array = made_and_filled(make, source)
    first = time.perf_counter() - wall, _cpu() - cpu
    again = time.perf_counter()
    array[: source.nbytes] = source
    again = time.perf_counter() - again
    del array
    if isinstance(buffer, mmap.mmap):
        buffer.close()
    return first[0], first[1], again


def measure(megabytes: float, repeats: int) -> dict[str, dict[str, float]]:
    source = np.ones(int(megabytes * 1e6), np.uint8)
    made = ways()
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in made}
    for _ in range(repeats):
        for name, make in made.items():
            runs[name].append(fill_once(make, source))

    def median_ms(got: list[tuple[float, float, float]], field: int) -> float:
        return round(statistics.median(run[field] for run in got) * 1e3, 2)

    return {
        name: {
            "first_fill_wall_ms": median_ms(got, 0),
            "first_fill_cpu_ms": median_ms(got, 1),
            "later_fill_wall_ms": median_ms(got, 2),
        }
        for name, got in runs.items()
    }


def kept_fills(way: str, megabytes: float, count: int) -> list[float]:
    """Wall ms of each first fill of `count` buffers kept alive (as the pool keeps them), made
    `way`, in this process: memory it has not used before, each time."""
    source = np.ones(int(megabytes * 1e6), np.uint8)
    make, kept, walls = ways()[way], [], []
    for _ in range(count):
        started = time.perf_counter()
        kept.append(made_and_filled(make, source))
        walls.append(round((time.perf_counter() - started) * 1e3, 1))
    return walls


def kept_in_fresh_processes(megabytes: float, count: int, idle: float) -> dict[str, list[float]]:
    """`kept_fills` for each way in a process of its own, after `idle` seconds with nothing
    running: time for a VM's host to take back memory freed before (free page reporting)."""
    found = {}
    for way in ways():
        time.sleep(idle)
        code = ("import json; from benchmarks.bench_fresh_memory import kept_fills; "
                f"print(json.dumps(kept_fills({way!r}, {megabytes}, {count})))")  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        found[way] = json.loads(done.stdout)
    return found


def free_huge_page_bytes() -> int | None:
    """Free memory in blocks of a 2 MiB huge page or more now (4 KiB pages), or None where
    unknown: the second line on of /proc/buddyinfo's counts, order 9 and up."""
    try:
        text = Path("/proc/buddyinfo").read_text()
    except OSError:
        return None
    if mmap.PAGESIZE != 4096:
        return None
    free = 0
    for line in text.splitlines():
        counts = line.partition("zone")[2].split()[1:]
        free += sum(
            int(count) * (4096 << order) for order, count in enumerate(counts) if order >= 9
        )
    return free


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=134.0, help="bytes filled (1e6)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--kept", type=int, default=6,
        help="then, each way in a fresh process: this many buffers kept alive, each filled once "
        "(0: skipped)",
    )  # fmt: skip
    parser.add_argument(
        "--idle", type=float, default=20.0, help="seconds idle before each of those processes"
    )
    parser.add_argument("--out", type=Path, help="save the JSON here (default: .results/)")
    args = parser.parse_args(argv)
    free = free_huge_page_bytes()
    figures = measure(args.megabytes, args.repeats)
    print(f"free in blocks of a huge page or more: "
          f"{'unknown' if free is None else f'{free / 2**30:.1f} GiB'}")  # fmt: skip
    for name, got in figures.items():
        print(f"{name:<12} first fill: wall {got['first_fill_wall_ms']:>8} ms, "
              f"CPU {got['first_fill_cpu_ms']:>8} ms; "
              f"a later fill {got['later_fill_wall_ms']} ms")  # fmt: skip
    report = {"megabytes": args.megabytes, "repeats": args.repeats,
              "free_huge_page_bytes": free, "ways": figures}  # fmt: skip
    if args.kept > 0:
        kept = kept_in_fresh_processes(args.megabytes, args.kept, args.idle)
        for name, walls in kept.items():
            print(f"{name:<12} {args.kept} kept, fresh process after {args.idle:.0f} s idle: "
                  f"first fills {walls} ms")  # fmt: skip
        report["kept_in_fresh_processes"] = {"count": args.kept, "idle_seconds": args.idle,
                                             "first_fill_wall_ms": kept}  # fmt: skip
    report.update(run_facts())
    save(report, "fresh-memory", "cpu", "none", args.out)


if __name__ == "__main__":
    main()
