"""What M3PIPE_REDIS_WAIT_REPLICAS costs a shard: marking shards done alone, and then
waiting (Redis WAIT, on the same connection) until one replica has each, side by side on a
real primary and replica started here (local sockets: the replication lag of one box; a
network adds its round trip).

    python -m benchmarks.bench_redis_wait --shards 2000
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.report import run_facts, save
from pipeline.jobs.shard_report import ShardReport
from pipeline.jobs.store import JobStore
from pipeline.ops.embedded_redis import EmbeddedRedis, find_redis_server
from schemas.job import ShardState


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def time_marks(store: JobStore, job_id: str, shards: range, replicas: int) -> list[float]:
    """Seconds each shard's queued -> done took, with WAIT for `replicas` (0: none)."""
    report = ShardReport(documents=1000, rows=1000, tokens=500_000, part_bytes=1 << 30)
    seconds = []
    for shard in shards:
        store.queue_shard(job_id, shard, "d" * 64, 1000)
        started = time.perf_counter()
        if replicas:
            store.mark_done_replicated(job_id, shard, ["queued"], report, replicas, 1000)
        else:
            store.mark_done(job_id, shard, ["queued"], report)
        seconds.append(time.perf_counter() - started)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=2000, help="shards marked done a side")
    parser.add_argument("--out", type=Path, help="save the JSON here (default: .results/)")
    args = parser.parse_args(argv)
    with (
        EmbeddedRedis(port=free_port()) as primary,  # its own temp dir, removed
        tempfile.TemporaryDirectory(prefix="m3pipe-replica-") as replica_dir,
    ):
        replica = subprocess.Popen(  # its own directory: a full sync writes a snapshot there
            [find_redis_server(), "--port", str(free_port()), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", replica_dir,
             "--replicaof", "127.0.0.1", str(primary.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            client = primary.client()
            deadline = time.monotonic() + 30
            while client.info("replication")["connected_slaves"] < 1:
                assert time.monotonic() < deadline, "the replica did not connect"
                time.sleep(0.05)
            store = JobStore.connect(primary.url)
            sides: dict[str, list[float]] = {"mark_done": [], "mark_done + WAIT 1": []}
            for block in range(4):  # alternating blocks: the machine's load shared
                for name, replicas in (("mark_done", 0), ("mark_done + WAIT 1", 1)):
                    job = f"bench-{replicas}-{block}"
                    sides[name] += time_marks(store, job, range(args.shards // 4), replicas)
            assert store.shard_state("bench-1-0", 0) == ShardState.DONE.value
        finally:
            replica.kill()
            replica.wait()
    report: dict = {"shards": args.shards, "sides": {}}
    for name, seconds in sides.items():
        report["sides"][name] = {
            "median_ms": round(statistics.median(seconds) * 1e3, 4),
            "p99_ms": round(sorted(seconds)[int(len(seconds) * 0.99) - 1] * 1e3, 4),
        }
        print(f"{name:<20} median {report['sides'][name]['median_ms']} ms, "
              f"p99 {report['sides'][name]['p99_ms']} ms a shard")  # fmt: skip
    alone, waited = (report["sides"][n]["median_ms"] for n in sides)
    report["wait_cost_ms"] = round(waited - alone, 4)
    print(f"WAIT adds {report['wait_cost_ms']} ms a shard (median)")
    report.update(run_facts())
    save(report, "redis-wait", "cpu", "none", args.out)


if __name__ == "__main__":
    main()
