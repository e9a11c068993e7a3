"""What grows with the corpus: the producer's memory and speed, and Redis's memory.

producer: a synthetic JSONL corpus of N short documents (1 in 1,000 a duplicate id) goes
through the real `m3pipe submit` against a redis-server this script starts, with no
workers (--max-queued above the shard count, so the producer never waits). The producer
process's RSS and the job's document counter are sampled as it runs. Reported:
documents/s, peak RSS, RSS growth per document (a least-squares slope over the second half
of the run, once caches have filled), Redis memory per document and per shard, and the
extrapolation of both to 10^9 documents. Prints and saves JSON.

    python benchmarks/bench_scale.py --documents 10000000
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

BILLION = 10**9


def write_corpus(path: Path, documents: int) -> int:
    """Short documents (~70 bytes of text); every 1,000th repeats an earlier id."""
    words = ["index", "shard", "vector", "sparse", "dense", "token", "query", "corpus"]
    with path.open("w", encoding="utf-8") as out:
        for start in range(0, documents, 100_000):
            lines = []
            for i in range(start, min(start + 100_000, documents)):
                doc_id = i - 500 if i % 1000 == 999 else i
                text = f"document {i} on {words[i % 8]} and {words[(i // 8) % 8]} at scale {i % 97}"
                lines.append(f'{{"id": "doc-{doc_id}", "text": "{text}"}}\n')
            out.write("".join(lines))
    return path.stat().st_size


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0


def producer(args: argparse.Namespace) -> dict:
    from pipeline.broker.redis_url import connect
    from pipeline.jobs.keys import job_key
    from pipeline.jobs.store import JobStore
    from pipeline.ops.embedded_redis import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="m3scale-", dir=args.tmp) as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        started = time.perf_counter()
        corpus_bytes = write_corpus(corpus, args.documents)
        print(
            f"corpus: {args.documents:,} documents, {corpus_bytes / 1e6:.0f} MB "
            f"({time.perf_counter() - started:.0f} s to write)",
            flush=True,
        )
        with EmbeddedRedis(Path(tmp)) as server:
            redis = connect(server.url)
            store = JobStore(redis)
            redis_before = int(redis.info("memory")["used_memory"])
            shards = -(-args.documents // args.shard_docs)
            env = {**os.environ, "M3PIPE_BROKER_URL": server.url, "HF_HUB_OFFLINE": "1"}
            command = [sys.executable, "-m", "pipeline.cli", "submit", str(corpus)]
            command += ["--out", str(Path(tmp) / "out"), "--model", args.model]
            command += ["--shard-docs", str(args.shard_docs), "--max-queued", str(shards + 1)]
            samples: list[tuple[float, int, int]] = []  # (seconds, documents queued, rss)
            started = time.perf_counter()
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
            job_id: str | None = None
            while proc.poll() is None:
                time.sleep(args.sample_seconds)
                rss = rss_bytes(proc.pid)
                if job_id is None:
                    ids = store.job_ids()
                    job_id = ids[0] if ids else None
                if rss is None or job_id is None:
                    continue
                queued = int(redis.hget(job_key(job_id), "documents_enqueued") or 0)
                samples.append((time.perf_counter() - started, queued, rss))
            seconds = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
            if proc.returncode != 0:
                raise SystemExit(f"m3pipe submit exited {proc.returncode}")
            redis_after = int(redis.info("memory")["used_memory"])
    if not samples:
        raise SystemExit("no samples: the run was shorter than --sample-seconds")
    second_half = [(docs, rss) for _, docs, rss in samples if docs >= args.documents // 2]
    if len(second_half) < 3:
        raise SystemExit("too few samples in the second half: lower --sample-seconds")
    growth = slope(second_half)
    redis_bytes = redis_after - redis_before
    return {
        "documents": args.documents,
        "corpus_bytes": corpus_bytes,
        "shards": shards,
        "seconds": round(seconds, 1),
        "documents_per_second": round(args.documents / seconds),
        "megabytes_per_second": round(corpus_bytes / seconds / 1e6, 1),
        "peak_rss_bytes": peak,
        "rss_growth_bytes_per_document": round(growth, 3),
        "rss_at_1e9_documents_bytes_extrapolated": round(
            peak + growth * (BILLION - args.documents)
        ),
        "redis_bytes": redis_bytes,
        "redis_bytes_per_document": round(redis_bytes / args.documents, 1),
        "redis_bytes_per_shard": round(redis_bytes / shards),
        "samples": [
            {"seconds": round(s, 1), "documents": d, "rss_bytes": r} for s, d, r in samples
        ],
    }


def main() -> int:
    from report import run_facts, save

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--shard-docs", type=int, default=1000)
    parser.add_argument("--model", default="random:tiny")
    parser.add_argument("--sample-seconds", type=float, default=1.0)
    parser.add_argument("--tmp", default=None, help="where the corpus and Redis go")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = producer(args)
    summary = {k: v for k, v in result.items() if k != "samples"}
    for key, value in summary.items():
        print(f"{key:42} {value:,}" if isinstance(value, int) else f"{key:42} {value}")
    save({**run_facts(), "producer": result}, "scale", "cpu", args.model, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
