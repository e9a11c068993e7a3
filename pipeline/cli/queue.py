"""The queue commands of `m3pipe` (worker, submit, status, wait, jobs, cancel, retry, repair,
run): their options. Each command's body is in the module of its kind: pipeline/cli/worker.py,
pipeline/cli/submit.py (submit, run), pipeline/cli/job_commands.py (the rest)."""

from __future__ import annotations

import argparse

from pipeline.cli.job_commands import (
    cmd_cancel,
    cmd_jobs,
    cmd_repair,
    cmd_retry,
    cmd_status,
    cmd_wait,
)
from pipeline.cli.options import (
    add_compute_options,
    add_encode_options,
    add_input_options,
    out_arg,
)
from pipeline.cli.rerank import add_task_option
from pipeline.cli.submit import cmd_run, cmd_submit
from pipeline.cli.tenants import add_consumer_tenant_option, add_job_tenant_options
from pipeline.cli.worker import cmd_worker


def add_shard_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue", help="queue to send shards to (default: $M3PIPE_QUEUE)")
    parser.add_argument("--shard-docs", type=int, help="documents per shard (default 1000)")
    parser.add_argument(
        "--shard-bytes", type=int, help="largest shard message in bytes (default 8 MiB)"
    )
    parser.add_argument(
        "--max-queued", type=int, help="shards of this job waiting in Redis at most (default 32)"
    )
    parser.add_argument(
        "--inline-shards",
        action="store_true",
        help="send the documents' text in shard messages, for workers that cannot read the "
        "inputs (by default a shard of a plain JSONL input names its byte ranges and lines, "
        "and workers read them)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace earlier output in --out")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the earlier job in --out (same inputs and settings): only shards "
        "without a good output file are encoded",
    )


def add_queue_commands(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser("worker", help="run a Celery worker pinned to one device")
    worker.add_argument("--device", help="GPU index N, or cpu (default: 0 if a GPU is present)")
    worker.add_argument("--queues", help="comma-separated queues (default: $M3PIPE_QUEUE)")
    add_consumer_tenant_option(worker)
    worker.add_argument("--name", help="worker name (default: gpuN@host or cpu@host)")
    worker.add_argument(
        "--metrics-port",
        type=int,
        help="Prometheus metrics port, 0 for none (default: $M3PIPE_METRICS_PORT, else "
        "9400 + N for GPU N, 9400 on CPU)",
    )
    worker.add_argument("--model", help="embedding model (default: $M3PIPE_MODEL)")
    worker.add_argument(
        "--rerank-model", help="cross-encoder for rerank jobs (default: $M3PIPE_RERANK_MODEL)"
    )
    worker.add_argument(
        "--preload",
        help="tasks whose model loads at start: embed, rerank, embed,rerank or none; the "
        "others load on their first shard (default: $M3PIPE_PRELOAD, else embed)",
    )
    worker.add_argument(
        "--slots",
        type=int,
        help="shards held at once, each in a pool process with its own copy of the model, "
        "taking turns on the device: one's reading, tokenizing and writing run while the "
        "other's batches compute (default: $M3PIPE_WORKER_SLOTS, else 1; 1-8)",
    )
    add_compute_options(worker)
    worker.set_defaults(func=cmd_worker)

    submit = sub.add_parser("submit", help="register a job and enqueue its shards")
    submit.add_argument(
        "inputs", nargs="+", help="input files or .txt directories: paths or URLs (s3://...)"
    )
    submit.add_argument(
        "--out",
        required=True,
        type=out_arg,
        help="output directory: a path or a URL (s3://bucket/prefix)",
    )
    add_task_option(submit)
    add_job_tenant_options(submit)
    add_encode_options(submit)
    add_input_options(submit)
    add_shard_options(submit)
    submit.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16", "any"],
        default="auto",
        help="the compute precision of every shard: a worker computing in another leaves "
        "the shard for one that does. auto (default): the first worker's, which then binds "
        "the job; any: workers of any precision, the manifest records the mix",
    )
    submit.add_argument(
        "--route-by-model",
        action="store_true",
        help="send the shards to the queue's route of --model, taken only by workers "
        "started with --route-by-model that serve it (default: $M3PIPE_ROUTE_BY_MODEL)",
    )
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="show a job (or the recent jobs)")
    status.add_argument("job", nargs="?", help="job id (default: list recent jobs)")
    status.add_argument("--watch", action="store_true", help="follow with a live progress bar")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    wait = sub.add_parser("wait", help="block until a job ends; exit 0 only if it completed")
    wait.add_argument("job")
    wait.add_argument("--timeout", type=float, help="give up after this many seconds (exit 124)")
    wait.set_defaults(func=cmd_wait)

    jobs = sub.add_parser("jobs", help="list recent jobs")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--tenant", help="only this tenant's jobs")
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs)

    cancel = sub.add_parser("cancel", help="cancel a job: queued shards are skipped")
    cancel.add_argument("job")
    cancel.set_defaults(func=cmd_cancel)

    retry = sub.add_parser("retry", help="re-enqueue a job's dead-lettered (failed) shards")
    retry.add_argument("job")
    retry.set_defaults(func=cmd_retry)

    repair = sub.add_parser(
        "repair",
        help="after Redis lost writes (a failover, an eviction): mark done the shards whose "
        "parts are written, send again the others that have not ended",
    )
    repair.add_argument("job")
    repair.set_defaults(func=cmd_repair)

    run = sub.add_parser("run", help="one command: Redis, workers, submit, follow, clean up")
    run.add_argument(
        "inputs", nargs="+", help="input files or .txt directories: paths or URLs (s3://...)"
    )
    run.add_argument(
        "--out",
        required=True,
        type=out_arg,
        help="output directory: a path or a URL (s3://bucket/prefix)",
    )
    run.add_argument("--workers", type=int, help="worker processes (default: one per GPU, or 1)")
    run.add_argument("--device", choices=["auto", "cpu"], default="auto", help="cpu forces CPU")
    run.add_argument(
        "--slots",
        type=int,
        help="shards each worker holds at once, taking turns on its device (as `m3pipe "
        "worker --slots`; default: $M3PIPE_WORKER_SLOTS, else 1)",
    )
    add_task_option(run)
    add_job_tenant_options(run)
    add_encode_options(run)
    add_input_options(run)
    add_shard_options(run)
    add_compute_options(run)
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)
