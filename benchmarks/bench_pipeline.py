"""`m3pipe run` (one worker, real Redis, real worker process) vs the engine in one process.

Same model, same corpus (bench_engine's), same shard size, one run each, side by side:
  direct:   `process_file` (what `m3pipe encode` runs): read JSONL, encode, write Parquet.
  pipeline: `m3pipe run --workers 1` against a redis-server this script starts, so that the
            job's and the worker's timestamps can be read back afterwards.
Model load is reported apart: the pipeline's end-to-end time runs from the later of job
submission and worker readiness (model loaded) to the job's end. Prints and saves JSON.

    python -m benchmarks.bench_pipeline --model random:small
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def direct_side(args: argparse.Namespace, corpus: Path, out: Path) -> dict:
    """Runs in a child process: load the model, then encode the corpus file to Parquet."""
    from pipeline.engine.embedder import EmbedEngine
    from pipeline.engine.model import load_model
    from pipeline.local.process import process_file
    from pipeline.settings import Settings
    from pipeline.tasks import task_kind
    from schemas.job import Task
    from schemas.options import EncodeOptions

    started = time.perf_counter()
    model = load_model(args.model, device="cpu", cache_dir=Settings().cache_dir)
    load_seconds = time.perf_counter() - started
    engine = EmbedEngine(model, EncodeOptions())
    started = time.perf_counter()
    summary = process_file(task_kind(Task.EMBED), corpus, out, engine, shard_items=args.shard_docs)
    seconds = time.perf_counter() - started
    return {
        "model_load_seconds": round(load_seconds, 3),
        "seconds": round(seconds, 3),
        "tokens": summary.stats.tokens,
        "rows": summary.rows,
        "tokens_per_second": round(summary.stats.tokens / seconds, 1),
    }


def pipeline_side(args: argparse.Namespace, corpus: Path, out: Path) -> dict:
    from pipeline.broker.redis_url import connect
    from pipeline.jobs.keys import worker_key
    from pipeline.jobs.store import JobStore
    from pipeline.ops.embedded_redis import EmbeddedRedis

    with (
        tempfile.TemporaryDirectory(prefix="m3b-", dir="/tmp") as tmp,
        EmbeddedRedis(Path(tmp)) as redis_server,
    ):
        env = {**os.environ, "M3PIPE_BROKER_URL": redis_server.url, "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "pipeline.cli", "run", str(corpus), "--out", str(out)]
        command += ["--model", args.model, "--workers", "1", "--device", "cpu", "-q"]
        command += ["--shard-docs", str(args.shard_docs)]
        started = time.time()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.time() - started
        if proc.returncode != 0:
            raise SystemExit(f"m3pipe run failed:\n{proc.stderr[-4000:]}")
        store = JobStore(connect(redis_server.url))
        [job_id] = store.job_ids()
        status = store.status(job_id)
        workers = [store.redis.hgetall(key) for key in store.redis.scan_iter(worker_key("*"))]
    [worker] = workers
    ready_at = float(worker["ready_at"])
    assert status.finished_at is not None and status.started_at is not None
    e2e = status.finished_at - max(status.created_at, ready_at)
    return {
        "run_wall_seconds": round(wall, 3),
        "model_load_seconds": float(worker["model_load_seconds"]),
        "worker_ready_after_seconds": round(ready_at - started, 3),
        "seconds": round(e2e, 3),
        "first_shard_to_end_seconds": round(status.finished_at - status.started_at, 3),
        "tokens": status.tokens_done,
        "rows": status.rows_done,
        "shards": status.shards.done,
        "tokens_per_second": round(status.tokens_done / e2e, 1),
        "state": status.state.value,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:small")
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--long-docs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-docs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--side", choices=["direct"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--side-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "direct":  # child process
        print(json.dumps(direct_side(args, args.corpus, args.side_out)))
        return 0

    from benchmarks.mfu import matmul_peak, model_flops, peak_shapes
    from benchmarks.report import LOCAL_RESULTS, ROOT, rerun_command, run_facts
    from pipeline.engine.model import load_model
    from pipeline.settings import Settings
    from pipeline.testing.corpora import lognormal_texts

    model = load_model(args.model, device="cpu", cache_dir=Settings().cache_dir)
    texts = lognormal_texts(model.tokenizer, args.docs, args.long_docs, args.seed)
    lengths = [len(x) for x in model.tokenizer(texts, truncation=True)["input_ids"]]
    flops = model_flops(model.encoder.config, lengths, head_outputs=int(model.colbert_dim) + 1)
    # Both sides compute in the model's default CPU precision; its matmul peak, measured now.
    peak = matmul_peak("cpu", model.dtype, peak_shapes(model.encoder.config, 16384))
    del model
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text(
            "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts))
        )
        child = rerun_command(*sys.argv[1:], "--side", "direct")
        child += ["--corpus", str(corpus), "--side-out", str(Path(tmp) / "direct")]
        proc = subprocess.run(
            child,
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            cwd=ROOT,
        )
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            return 1
        direct = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  direct: {direct}", flush=True)
        pipeline = pipeline_side(args, corpus, Path(tmp) / "pipeline")
        print(f"pipeline: {pipeline}", flush=True)

    assert direct["tokens"] == pipeline["tokens"], "both sides must encode the same tokens"
    for side in (direct, pipeline):
        achieved = flops / side["seconds"] / 1e9
        side.update(achieved_gflops=round(achieved, 1), mfu=round(achieved / peak["gflops"], 4))
    report = {
        "benchmark": "bench_pipeline",
        "model": args.model,
        "device": "cpu",
        "corpus": {"docs": args.docs, "tokens": direct["tokens"], "seed": args.seed},
        "shard_docs": args.shard_docs,
        "direct": direct,
        "pipeline": pipeline,
        "ratios": {
            "tokens_per_second": round(
                pipeline["tokens_per_second"] / direct["tokens_per_second"], 3
            ),
        },
        "target": {"tokens_per_second": ">= 0.85"},
        "matmul_peak": peak,
        "gflop_per_token": round(flops / sum(lengths) / 1e9, 4),
        **run_facts(),
    }
    out = args.out or LOCAL_RESULTS / f"pipeline-cpu-{args.model.replace(':', '-')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios"]), f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
