"""Memory stays bounded: a worker over 200 shards, a producer over a corpus far above its limit.

Not a speed figure: each check compares a process with itself (RSS early vs late) or one
run with another (small corpus vs a corpus 50x the queued-shard limit), so machine noise
does not move it much. Bounds are a few MB against growth that would be tens of MB.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipeline.jobs.keys import worker_key
from pipeline.tasks.embed import INLINE_READ_FILES
from tests.integration.conftest import write_jsonl

SHARDS = 200
DOCS_PER_SHARD = 5
DOC_CHARS = 20_000  # 100 KB per shard, 20 MB for the whole corpus
MAX_QUEUED = 2
WORKER_GROWTH_LIMIT_MB = 10  # holding each shard's documents would add 16 MB
PRODUCER_GROWTH_LIMIT_MB = 10  # holding the corpus would add over 23 MB


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def corpus(path: Path, shards: int) -> Path:
    words = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
    records = []
    for i in range(shards * DOCS_PER_SHARD):
        text = " ".join(words[(i + j) % len(words)] for j in range(DOC_CHARS // 6))
        records.append({"id": f"doc-{i:05d}", "text": f"{i} {text}"})
    return write_jsonl(path, records)


def split(path: Path, files: int) -> list[Path]:
    """The corpus's lines dealt into `files` files beside it."""
    lines = path.read_text().splitlines(keepends=True)
    parts = [path.with_name(f"{path.stem}-{n:02d}.jsonl") for n in range(files)]
    for n, part in enumerate(parts):
        part.write_text("".join(lines[n::files]))
    return parts


def submit_peak_rss_mb(inputs: list[Path], out: Path, env: dict) -> float:
    """Run `m3pipe submit` to the end; the peak RSS of it and its reading process (each
    one's VmHWM, read until it exits, summed: at least their peak together).

    Not ru_maxrss: Linux carries the high-water mark across exec, so a child forked from
    this (large) test process would report the test's own RSS.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "submit",
         *map(str, inputs), "--out", str(out),
         "--shard-docs", str(DOCS_PER_SHARD), "--max-queued", str(MAX_QUEUED),
         "--max-length", "64"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    peaks: dict[int, float] = {}
    while process.poll() is None:
        for pid in (process.pid, *children(process.pid)):
            with contextlib.suppress(OSError, AssertionError):  # exiting: /proc entry going
                peaks[pid] = max(peaks.get(pid, 0.0), status_mb(pid, "VmHWM"))
        time.sleep(0.02)
    assert process.returncode == 0
    assert len(peaks) == 2, peaks  # the producer and its reading process were both seen
    return sum(peaks.values())


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def test_worker_and_producer_memory_stay_flat(tmp_path, cli_env, workers, store):
    [name] = workers.start(1)
    pool_pid = int(store.redis.hget(worker_key(name), "pid"))

    # The producer's peak on a 4-shard corpus, then on one 50x the queued-shard limit. The
    # small one in more files than the producer parses itself (INLINE_READ_FILES): a
    # reading process parses both, and the same two processes are compared.
    small = split(corpus(tmp_path / "small.jsonl", 4), INLINE_READ_FILES + 1)
    small_peak = submit_peak_rss_mb(small, tmp_path / "o1", cli_env)
    big = corpus(tmp_path / "big.jsonl", SHARDS)
    assert big.stat().st_size > 50 * MAX_QUEUED * DOCS_PER_SHARD * DOC_CHARS
    samples: dict[int, float] = {}  # shards done -> the pool process's RSS then
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            job_ids = store.job_ids()
            done = store.status(job_ids[0]).shards.done if len(job_ids) == 2 else 0
            samples.setdefault(done, status_mb(pool_pid, "VmRSS"))
            time.sleep(0.1)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        big_peak = submit_peak_rss_mb([big], tmp_path / "o2", cli_env)
        deadline = time.monotonic() + 300
        while max(samples, default=0) < SHARDS:
            assert time.monotonic() < deadline, f"{max(samples)}/{SHARDS} shards after 300 s"
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert int(store.redis.hget(worker_key(name), "pid")) == pool_pid  # same process throughout

    warm = [rss for shards, rss in samples.items() if 20 <= shards <= 40]
    late = [rss for shards, rss in samples.items() if shards >= SHARDS - 20]
    growth = max(late) - min(warm)
    print(
        f"worker RSS: {min(warm):.0f} MB after 20-40 shards, {max(late):.0f} MB after "
        f"{SHARDS - 20}-{SHARDS}; producer peak {small_peak:.0f} MB (4 shards) vs "
        f"{big_peak:.0f} MB ({SHARDS} shards, {big.stat().st_size / 1e6:.0f} MB corpus)"
    )
    assert growth < WORKER_GROWTH_LIMIT_MB
    assert big_peak - small_peak < PRODUCER_GROWTH_LIMIT_MB
