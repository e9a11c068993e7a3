"""What grows with the corpus: the producer's memory and speed, Redis, finalisation.

producer: a synthetic JSONL corpus of N short documents (1 in 1,000 a duplicate id) goes
through the real `m3pipe submit` against a redis-server this script starts, with no
workers (--max-queued above the shard count, so the producer never waits). The RSS of the
producer's processes together (it and its reading process) and the job's document counter
are sampled as it runs. Reported:
documents/s, peak RSS, RSS growth per document (a least-squares slope over the second half
of the run, once caches have filled), Redis memory per document and per shard, and the
extrapolation of both to 10^9 documents.

index: the producer's duplicate index alone (pipeline/inputs/indexes/first_seen.py), --keys keys
offered in a row (1 in 200 a repeat), its RSS sampled: the memory bound and the cost per key.

finalise: a job of --shards done shards (their part files empty, their state set through
JobStore as workers set it) is finalised in a fresh process: its wall time and peak RSS,
the sizes of `_manifest.json` and `_shards.jsonl`, and Redis's bytes per shard of job state.
With --store s3 the output is on a local S3 server (moto, as the tests start it), and the
job is finalised twice side by side: its parts listed a page at a time and whole.

machinery: --pipeline-documents short documents through submit -> Redis -> one worker ->
Parquet (random:tiny, one thread per process), after a job of a tenth as many on the same
warm worker: CPU microseconds per document of the producer, Redis and the worker outside the
engine (reading references, tokenizing, Parquet, job state, Celery), and the engine's.

reuse: --reuse-documents documents encoded, then re-encoded with --reuse-changed of them
edited, fully and with `--reuse` (--reuse-repeats times: a run of a few seconds is noisy
on a shared machine; benchmarks/scale_reuse.py): the wall-time ratio of the median.

Prints and saves JSON (one file per run; the parts run are its keys).

    python -m benchmarks.bench_scale --parts producer,index,finalise --documents 10000000
    python -m benchmarks.bench_scale --parts machinery --pipeline-documents 100000 \
        --out benchmarks/results/scale-machinery-cpu-random-tiny.json
    python -m benchmarks.bench_scale --parts reuse --model random:small --reuse-documents 2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import (
    peak_since_reset,
    process_tree,
    reset_peak,
    rss_bytes,
    spawn_side,
    tree_rss_bytes,
)

BILLION = 10**9


def write_corpus(path: Path, documents: int, doc_bytes: int = 0) -> int:
    """Short documents (~70 bytes of text, or words up to ~`doc_bytes` bytes a line);
    every 1,000th repeats an earlier id."""
    words = ["index", "shard", "vector", "sparse", "dense", "token", "query", "corpus"]
    filler = " ".join(words[(i * 5) % 8] for i in range(max(doc_bytes, 0) // 6 + 1))
    with path.open("w", encoding="utf-8") as out:
        for start in range(0, documents, 100_000):
            lines = []
            for i in range(start, min(start + 100_000, documents)):
                doc_id = i - 500 if i % 1000 == 999 else i
                text = f"document {i} on {words[i % 8]} and {words[(i // 8) % 8]} at scale {i % 97}"
                if doc_bytes:
                    text = (text + " " + filler)[: max(doc_bytes - 30, len(text))]
                lines.append(f'{{"id": "doc-{doc_id}", "text": "{text}"}}\n')
            out.write("".join(lines))
    return path.stat().st_size


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
        corpus_bytes = write_corpus(corpus, args.documents, args.doc_bytes)
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
                rss = tree_rss_bytes(proc.pid)  # the producer and its reading process
                if job_id is None:
                    ids = store.job_ids()
                    job_id = ids[0] if ids else None
                if rss is None or job_id is None:
                    continue
                queued = int(redis.hget(job_key(job_id), "documents_enqueued") or 0)
                samples.append((time.perf_counter() - started, queued, rss))
            seconds = time.perf_counter() - started
            largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
            if proc.returncode != 0:
                raise SystemExit(f"m3pipe submit exited {proc.returncode}")
            redis_after = int(redis.info("memory")["used_memory"])
    if not samples:
        raise SystemExit("no samples: the run was shorter than --sample-seconds")
    peak = max(rss for _, _, rss in samples)
    second_half = [(docs, rss) for _, docs, rss in samples if docs >= args.documents // 2]
    if len(second_half) < 3:
        raise SystemExit("too few samples in the second half: lower --sample-seconds")
    growth = slope(second_half)
    redis_bytes = redis_after - redis_before
    return {
        "documents": args.documents,
        "bytes_per_document": round(corpus_bytes / args.documents, 1),
        "corpus_bytes": corpus_bytes,
        "shards": shards,
        "seconds": round(seconds, 1),
        "documents_per_second": round(args.documents / seconds),
        "megabytes_per_second": round(corpus_bytes / seconds / 1e6, 1),
        # The producer and its reading process together, sampled; and the largest one
        # process's own high-water mark.
        "peak_rss_bytes": peak,
        "peak_rss_largest_process_bytes": largest,
        "rss_growth_bytes_per_document": round(growth, 3),
        # From the larger of the two peaks: the sampled sum can miss a short high.
        "rss_at_1e9_documents_bytes_extrapolated": round(
            max(peak, largest) + growth * (BILLION - args.documents)
        ),
        "redis_bytes": redis_bytes,
        "redis_bytes_per_document": round(redis_bytes / args.documents, 1),
        "redis_bytes_per_shard": round(redis_bytes / shards),
        "samples": [
            {"seconds": round(s, 1), "documents": d, "rss_bytes": r} for s, d, r in samples
        ],
    }


def index(args: argparse.Namespace) -> dict:
    """Runs in a fresh process: the duplicate index alone, offered keys in batches of
    1,024 as the producer does (FirstSeen.first_many), RSS sampled every ~1M keys."""
    from pipeline.inputs.indexes.first_seen import FirstSeen
    from pipeline.inputs.intake import DUPLICATE_BATCH

    samples: list[tuple[int, int]] = []
    repeats = 0
    baseline = reset_peak()
    started = time.perf_counter()
    with FirstSeen(args.tmp) as seen:
        for start in range(0, args.keys, DUPLICATE_BATCH):
            numbers = range(start, min(start + DUPLICATE_BATCH, args.keys))
            keys = [f"doc-{i // 2 if i % 200 == 199 else i}" for i in numbers]
            wheres = [f"corpus.jsonl line {i + 1}" for i in numbers]
            repeats += sum(1 for first in seen.first_many(keys, wheres) if first is not None)
            if start % 1_000_000 < DUPLICATE_BATCH:
                samples.append((start, rss_bytes(os.getpid()) or 0))
        seconds = time.perf_counter() - started
        disk = sum(path.stat().st_size for path in seen.directory.iterdir())
    peak = peak_since_reset()
    second_half = [(keys, rss) for keys, rss in samples if keys >= args.keys // 2]
    growth = slope(second_half) if len(second_half) >= 3 else None
    return {
        "keys": args.keys,
        "repeats_found": repeats,
        "seconds": round(seconds, 1),
        "microseconds_per_key": round(seconds / args.keys * 1e6, 2),
        "rss_before_bytes": baseline,
        "peak_rss_bytes": peak,
        "rss_growth_bytes_per_key": None if growth is None else round(growth, 3),
        "disk_bytes": disk,
        "disk_bytes_per_key": round(disk / args.keys, 1),
        "samples": [{"keys": k, "rss_bytes": r} for k, r in samples],
    }


def put_empty_parts(out: str, shards: int) -> None:
    """An empty part file for each shard: local files, or objects put 16 at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.storage.location import open_location
    from pipeline.storage.sink import part_name

    location = open_location(out)
    location.make_dir()
    if location.is_local:
        for shard in range(shards):
            (location.local_path / part_name(shard)).touch()
        return
    from pipeline.storage.s3_listing import paged_s3_client

    client = paged_s3_client(location.query, "")  # boto3: half the time of pyarrow's puts
    bucket, _, prefix = location.path.partition("/")
    with ThreadPoolExecutor(16) as pool:
        for _ in pool.map(
            lambda n: client.put_object(Bucket=bucket, Key=f"{prefix}/{part_name(n)}", Body=b""),
            range(shards),
        ):
            pass


def finalise_setup(args: argparse.Namespace, redis_url: str, out: str, job_id: str) -> str:
    """A job whose --shards shards are all done, as submit and workers leave it (its
    part files put beforehand)."""
    from pipeline.broker.redis_url import connect
    from pipeline.jobs.shard_report import ShardReport
    from pipeline.jobs.store import ABSENT, JobStore
    from pipeline.storage.location import open_location
    from pipeline.storage.output_lease import take_lease
    from schemas.job import JobSpec, ShardState
    from schemas.options import EncodeOptions

    store = JobStore(connect(redis_url))
    spec = JobSpec(
        job_id=job_id, inputs=["corpus.jsonl"], out=out, model="random:tiny",
        options=EncodeOptions(), queue="m3pipe", shard_docs=1000, shard_bytes=1 << 24,
        max_queued=1 << 30, created_at=time.time(),
    )  # fmt: skip
    store.create(spec)
    # The job owns the directory as submit's does, or finalisation refuses to write there.
    take_lease(open_location(out), command="submit", job_id=job_id, job_alive=store.is_active)
    active = [ShardState.QUEUED.value, ShardState.RUNNING.value]
    digest = "0" * 64
    for shard in range(args.shards):
        # What submit and one worker's delivery leave behind, call for call.
        store.set_shard_digest(spec.job_id, shard, digest)
        store.mark_shard(spec.job_id, shard, ShardState.QUEUED, [ABSENT], {"documents": 1000})
        running = {"worker": "celery@gpu-node-017-3", "documents": 1000, "started": time.time()}
        store.mark_shard(spec.job_id, shard, ShardState.RUNNING, active, running)
        store.count_attempt(spec.job_id, shard)
        store.take_ownership(spec.job_id, shard)
        report = ShardReport(
            documents=1000, rows=1000, tokens=60_000, part_bytes=1_500_000, seconds=4.2
        )
        store.mark_done(spec.job_id, shard, active, report)
        store.release_shard(spec.job_id, shard)
    store.set_submitted(
        spec.job_id, shards=args.shards, documents=1000 * args.shards,
        input_records=1000 * args.shards, rejected=0,
    )  # fmt: skip
    return spec.job_id


def finalise_side(args: argparse.Namespace) -> dict:
    """Runs in a fresh process: finalise the job the parent set up."""
    from pipeline.broker.redis_url import connect
    from pipeline.jobs.finish import finalize_if_complete
    from pipeline.jobs.store import JobStore

    if args.listing == "pyarrow":  # as without boto3: the whole listing at once
        import pipeline.storage.location

        pipeline.storage.location.paged_s3_client = lambda *_: None  # type: ignore[assignment]
    from pipeline.storage.location import open_location
    from pipeline.storage.output_dir import LETTERS_DIR

    store = JobStore(connect(args.redis_url))
    # Imports, connections and clients settled before the baseline: a listing of nothing.
    list((open_location(store.spec(args.job_id).out) / LETTERS_DIR).child_names())
    before = reset_peak()
    started = time.perf_counter()
    state = finalize_if_complete(store, args.job_id)
    seconds = time.perf_counter() - started
    peak = peak_since_reset()
    return {"state": str(state), "seconds": round(seconds, 2), "rss_before_bytes": before,
            "peak_rss_bytes": peak}  # fmt: skip


def finalise(args: argparse.Namespace) -> dict:
    """Local output: one finalisation. S3 (--store s3, a local moto server): the same job
    finalised twice, side by side, listing its parts a page at a time (boto3) and whole
    (pyarrow); each a fresh process."""
    from pipeline.broker.redis_url import connect
    from pipeline.ops.embedded_redis import EmbeddedRedis
    from pipeline.storage.location import open_location
    from pipeline.storage.output_dir import MANIFEST, SHARDS

    with tempfile.TemporaryDirectory(prefix="m3scale-", dir=args.tmp) as tmp:
        server = start_s3(Path(tmp)) if args.store == "s3" else None
        listings = ["paged", "pyarrow"] if server else ["local"]
        out = f"s3://{server.new_bucket()}/out" if server else str(Path(tmp) / "out")
        started = time.perf_counter()
        put_empty_parts(out, args.shards)  # the jobs' shared output
        parts_seconds = time.perf_counter() - started
        sides = {}
        try:
            with EmbeddedRedis(Path(tmp)) as redis_server:
                redis = connect(redis_server.url)
                for listing in listings:
                    before = int(redis.info("memory")["used_memory"])
                    started = time.perf_counter()
                    job_id = finalise_setup(args, redis_server.url, out, f"bench-{listing}")
                    setup = time.perf_counter() - started
                    per_shard = (int(redis.info("memory")["used_memory"]) - before) / args.shards
                    side = spawn_side(["--side", "finalise", "--listing", listing,
                                                 "--redis-url", redis_server.url,
                                                 "--job-id", job_id])  # fmt: skip
                    if side is None:
                        raise SystemExit("the finalising process failed")
                    growth = side["peak_rss_bytes"] - side["rss_before_bytes"]
                    sides[listing] = {
                        "setup_seconds": round(setup + parts_seconds, 1),
                        "redis_bytes_per_shard": round(per_shard),
                        **side,
                        "rss_growth_bytes_per_shard": round(growth / args.shards, 1),
                    }
            location = open_location(out)
            manifest_bytes, log_bytes = (location / MANIFEST).size(), (location / SHARDS).size()
        finally:
            if server is not None:
                server.stop()
    result: dict = {"shards": args.shards, "store": args.store}
    result |= sides.get("local", {"listings": sides})
    return result | {
        "manifest_bytes": manifest_bytes,
        "shards_log_bytes": log_bytes,
        "shards_log_bytes_per_shard": round(log_bytes / args.shards, 1),
    }


def start_s3(tmp: Path):  # -> pipeline.testing.s3_server.S3Server
    """The tests' local S3 server (moto), this process's AWS_* variables pointing at it
    (the finalising processes inherit them)."""
    from pipeline.testing.s3_server import S3Server

    server = S3Server(tmp / "moto.log")
    os.environ.update(server.env())
    return server


def tree_cpu_seconds(root: int) -> float:
    """user + system CPU seconds of `root` and its live descendants (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    tree = process_tree(root)
    return sum((int(fields[11]) + int(fields[12])) / ticks for fields in tree.values())


def machinery(args: argparse.Namespace) -> dict:
    """Short documents through submit -> Redis -> one worker -> Parquet, one thread each.

    Two jobs on the same warm worker, of N/10 and N documents: the per-document figures are
    the differences divided by 0.9 N, so start-up (imports, the worker's model) drops out.
    The engine's share is its measured time from tokens to table (forward and output)."""
    from pipeline.broker.redis_url import connect
    from pipeline.jobs.keys import job_key, worker_key
    from pipeline.jobs.store import JobStore
    from pipeline.ops.embedded_redis import EmbeddedRedis
    from pipeline.ops.process_group import stop_process_groups

    sizes = (args.pipeline_documents // 10, args.pipeline_documents)
    runs = []
    with (
        tempfile.TemporaryDirectory(prefix="m3scale-", dir=args.tmp) as tmp,
        EmbeddedRedis(Path(tmp)) as server,
    ):
        assert server.process is not None
        redis_pid = server.process.pid
        redis = connect(server.url)
        store = JobStore(redis)
        env = {**os.environ, "M3PIPE_BROKER_URL": server.url, "HF_HUB_OFFLINE": "1",
               "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "M3PIPE_MODEL": args.model, "M3PIPE_PRECISION": "fp32"}  # fmt: skip
        name = "bench@scale"
        cli = [sys.executable, "-m", "pipeline.cli"]
        with open(Path(tmp) / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                [*cli, "worker", "--device", "cpu", "--name", name],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not redis.exists(worker_key(name)):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit((Path(tmp) / "worker.log").read_text()[-3000:])
                time.sleep(0.2)
            for documents in sizes:
                corpus = Path(tmp) / f"corpus-{documents}.jsonl"
                write_corpus(corpus, documents)
                worker_before = tree_cpu_seconds(worker.pid)
                redis_before = tree_cpu_seconds(redis_pid)
                started = time.perf_counter()
                submit = subprocess.Popen(
                    [*cli, "submit", str(corpus), "--out", str(Path(tmp) / f"out-{documents}"),
                     "--shard-docs", str(args.shard_docs)],
                    env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                _, status, usage = os.wait4(submit.pid, 0)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise SystemExit("m3pipe submit failed")
                job_id = submit.stdout.read().decode().split()[-1]  # type: ignore[union-attr]
                while store.state(job_id).value not in ("completed", "failed"):
                    time.sleep(0.05)
                runs.append({
                    "documents": documents,
                    "wall_seconds": time.perf_counter() - started,
                    "producer": usage.ru_utime + usage.ru_stime,
                    "redis": tree_cpu_seconds(redis_pid) - redis_before,
                    "worker": tree_cpu_seconds(worker.pid) - worker_before,
                    "engine": float(redis.hget(job_key(job_id), "encode_seconds") or 0),
                })  # fmt: skip
        finally:
            stop_process_groups([worker], grace_seconds=30)
    small, big = runs
    count = big["documents"] - small["documents"]

    def per_doc(key: str) -> float:
        return round((big[key] - small[key]) / count * 1e6, 1)

    figures = {
        "producer": per_doc("producer"),
        "redis": per_doc("redis"),
        "worker_outside_engine": round(per_doc("worker") - per_doc("engine"), 1),
    }
    return {
        "runs": [
            {k: round(v, 2) if isinstance(v, float) else v for k, v in run.items()} for run in runs
        ],
        "microseconds_per_document": {**figures, "engine": per_doc("engine")},
        "outside_engine_microseconds_per_document": round(sum(figures.values()), 1),
        "bound_by": max(figures, key=figures.__getitem__),
    }


def reuse_part(args: argparse.Namespace) -> dict:
    from benchmarks.scale_reuse import reuse

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        return reuse(args, Path(tmp))


def main() -> int:
    from benchmarks.report import run_facts, save

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="producer,index,finalise,machinery")
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=10_000_000, help="index: keys offered")
    parser.add_argument("--shards", type=int, default=100_000, help="finalise: shards")
    parser.add_argument(
        "--store", choices=["local", "s3"], default="local", help="finalise: where the output is"
    )
    parser.add_argument(
        "--pipeline-documents", type=int, default=50_000, help="machinery: documents"
    )
    parser.add_argument("--reuse-documents", type=int, default=2000, help="reuse: documents")
    parser.add_argument("--reuse-changed", type=float, default=0.02, help="reuse: share edited")
    parser.add_argument("--reuse-max-length", type=int, default=8192)
    parser.add_argument(
        "--reuse-repeats", type=int, default=3, help="reuse: runs with --reuse (the median)"
    )
    parser.add_argument("--shard-docs", type=int, default=1000)
    parser.add_argument(
        "--doc-bytes", type=int, default=0, help="producer: ~bytes per JSONL line (0: ~80)"
    )
    parser.add_argument("--model", default="random:tiny")
    parser.add_argument("--sample-seconds", type=float, default=1.0)
    parser.add_argument("--tmp", default=None, help="where the corpus and Redis go")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--side", choices=["index", "finalise"], help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--job-id", help=argparse.SUPPRESS)
    parser.add_argument("--listing", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(index(args) if args.side == "index" else finalise_side(args)))
        return 0
    parts = {"producer": lambda: producer(args), "finalise": lambda: finalise(args),
             "index": lambda: spawn_side(["--side", "index"]),
             "machinery": lambda: machinery(args), "reuse": lambda: reuse_part(args)}  # fmt: skip
    report = run_facts()
    for name in args.parts.split(","):
        result = parts[name]()
        if result is None:
            raise SystemExit(f"{name} failed")
        print(f"-- {name}")
        for key, value in result.items():
            if key != "samples":
                print(f"{key:42} {value:,}" if isinstance(value, int) else f"{key:42} {value}")
        report[name] = result
    save(report, "scale", "cpu", args.model, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
