"""The queue commands of `m3pipe`: worker, submit, status, wait, jobs, cancel, run."""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from pipeline.cli.options import (
    add_compute_options,
    add_encode_options,
    add_input_options,
    checked_queue,
    gpu_present,
    job_store,
    max_record_bytes,
    options_from_args,
    out_arg,
    parse_keep_fields,
    usage_error,
)
from pipeline.cli.rerank import add_task_option, check_no_embed_flags, rerank_options_from_args
from pipeline.cli.tenants import (
    add_consumer_tenant_option,
    add_job_tenant_options,
    consumer_queues,
    job_tenant,
)
from pipeline.errors import JobNotFound
from pipeline.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT
from pipeline.jobs.failures import describe_failures, failure_reasons
from pipeline.jobs.orphans import orphaned_shards
from pipeline.jobs.store import JobStore
from pipeline.runtime.openmp import forward_on_this_cpu, sleep_when_idle_unless_computing
from pipeline.settings import MAX_WORKER_SLOTS, Settings
from schemas.job import JobStatus, Task
from schemas.options import EncodeOptions
from schemas.tenant import tenant_queue

if TYPE_CHECKING:
    from producers.submit import SubmitRequest


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


# -- worker ---------------------------------------------------------------------------------
def preloaded_specs(settings: Settings) -> list[str]:
    """The model specs a worker loads at its start (M3PIPE_PRELOAD), in task order."""
    return [settings.model if task is Task.EMBED else settings.rerank_model
            for task in settings.preload_tasks]  # fmt: skip


def pin_device(device: str) -> tuple[str, str]:
    """Set CUDA_VISIBLE_DEVICES for this process and its children; (worker device, name stem)."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu", "cpu"
    if not device.isdigit():
        raise ValueError(f"--device must be a GPU index or cpu, not {device!r}")
    os.environ["CUDA_VISIBLE_DEVICES"] = physical_device(device)
    return "cuda", f"gpu{device}"


def physical_device(index: str) -> str:
    """The device to pin for GPU `index`: CUDA numbers GPUs within an inherited
    CUDA_VISIBLE_DEVICES (a scheduler's "4,5", or UUIDs), so index 1 there is its second
    entry, not physical GPU 1; with none inherited, the index itself."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is None:
        return index
    visible = [entry.strip() for entry in inherited.split(",") if entry.strip()]
    if int(index) >= len(visible):
        raise ValueError(
            f"--device {index}: only {len(visible)} GPU(s) visible "
            f"(CUDA_VISIBLE_DEVICES={inherited!r})"
        )
    return visible[int(index)]


def worker_metrics_port(flag: int | None, settings: Settings, device: str) -> int:
    from pipeline.runtime.metrics import WORKER_METRICS_PORT

    if flag is not None:
        return flag
    if settings.metrics_port is not None:
        return settings.metrics_port
    return WORKER_METRICS_PORT + (int(device) if device.isdigit() else 0)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.bootstrap import WORKER_NAME_ENV

    device = args.device or ("0" if gpu_present() else "cpu")
    try:
        # Before anything touches CUDA: the pool processes inherit the pinning.
        worker_device, stem = pin_device(device)
        if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
            raise ValueError("--metrics-port must be 0-65535")
    except ValueError as exc:
        return usage_error(exc)
    name = args.name or f"{stem}@{socket.gethostname()}"
    os.environ["M3PIPE_WORKER_DEVICE"] = worker_device
    if worker_device == "cuda":
        # Batch shapes vary widely (20 to 8192 tokens): without expandable segments the
        # caching allocator fragments and runs out of memory it holds (docs/deploy.md).
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    os.environ[WORKER_NAME_ENV] = name
    os.environ["M3PIPE_PRECISION"] = args.precision or settings.precision
    metrics_port = worker_metrics_port(args.metrics_port, settings, device)
    os.environ["M3PIPE_METRICS_PORT"] = str(metrics_port)
    if args.model:
        os.environ["M3PIPE_MODEL"] = args.model
    if args.rerank_model:
        os.environ["M3PIPE_RERANK_MODEL"] = args.rerank_model
    if args.preload is not None:
        os.environ["M3PIPE_PRELOAD"] = args.preload
    if args.slots is not None:
        os.environ["M3PIPE_WORKER_SLOTS"] = str(args.slots)
    try:
        slots = Settings().worker_slots  # the pool processes read them: refuse a bad value here
    except ValidationError as exc:
        return usage_error(exc)
    try:
        served = Settings()  # with --model and --rerank-model applied
        queues = ",".join(consumer_queues(args.queues, args.tenants, served, args.route_by_model))
    except ValueError as exc:
        return usage_error(exc)

    if args.own_process:  # before torch loads: OpenMP spins only for a forward on this CPU
        on_gpu = worker_device == "cuda"
        sleep_when_idle_unless_computing(forward_on_this_cpu(preloaded_specs(served), on_gpu))
    check_worker_can_start(Settings(), name)
    from pipeline.runtime.device_gate import GATE_FILE_ENV
    from workers import app as celery_app
    from workers.bootstrap import STARTUP_FAILURE_ENV

    with tempfile.TemporaryDirectory(prefix="m3pipe-worker-") as scratch:
        failure = Path(scratch) / "startup-failure"
        os.environ[STARTUP_FAILURE_ENV] = str(failure)
        if slots > 1:  # the slots take turns on the device: pipeline/runtime/device_gate.py
            os.environ[GATE_FILE_ENV] = str(Path(scratch) / "device-gate")
        code = celery_app.run_worker(name, queues.split(","), slots)
        if failure.exists():  # the pool process could not start: say why, exit non-zero
            print(f"m3pipe worker: cannot start: {failure.read_text()}", file=sys.stderr)
            return EXIT_FAILED
    if code not in (EXIT_OK, EXIT_INTERRUPTED):  # an unrecoverable error: its log says which
        print(f"m3pipe worker: Celery's worker stopped with exit status {code}", file=sys.stderr)
        return EXIT_FAILED
    return code


def check_worker_can_start(settings: Settings, name: str) -> None:
    """What would stop a worker's pool process, found before Celery starts: Redis out of
    reach or refusing the password (RedisConnectionError), a preloaded model that is not
    there (ModelLoadError, with what to do), a Redis that evicts keys or is a cluster
    (RedisUnsuitable). Each is one line from `main`, exit 1. Then an earlier record of
    worker `name` is forgotten: its pool processes register once their models are in."""
    from pipeline.broker.redis_checks import check_redis
    from pipeline.broker.redis_url import connect
    from pipeline.engine.model import resolve_model_path
    from schemas.job import Task

    client = connect(settings.broker, settings.redis_retry_seconds)
    try:
        check_redis(client, settings.allow_eviction)
        JobStore(client).forget_worker(name)
    finally:
        client.close()
    for task, spec in zip(settings.preload_tasks, preloaded_specs(settings), strict=True):
        resolve_model_path(
            spec, settings.cache_dir, settings.hub_timeout, reranker=task is Task.RERANK
        )


# -- submit ---------------------------------------------------------------------------------
def job_queue(args: argparse.Namespace, settings: Settings, tenant: str, model: str) -> str:
    """The queue of a job's shards: the tenant's, routed by model when asked."""
    from pipeline.broker.routing import model_queue

    queue = checked_queue(tenant_queue(args.queue or settings.queue, tenant))
    if getattr(args, "route_by_model", False) or settings.route_by_model:
        return model_queue(queue, model)
    return queue


def submit_request(args: argparse.Namespace, settings: Settings) -> SubmitRequest:
    from pipeline.tasks import task_kind
    from producers.submit import ShardLimits, SubmitRequest

    def flag_or_setting(flag: int | None, setting: int) -> int:
        return setting if flag is None else flag  # an explicit 0 is an error, not the default

    limits = ShardLimits.plan(
        flag_or_setting(args.shard_docs, settings.shard_docs),
        flag_or_setting(args.shard_bytes, settings.shard_bytes),
        settings.visibility_timeout,
        settings.planned_tokens_per_second,
    )
    if limits.items < 1 or limits.bytes < 1024:
        raise ValueError("--shard-docs must be >= 1 and --shard-bytes >= 1024")
    if args.resume and args.overwrite:
        raise ValueError("--resume keeps the earlier output, --overwrite deletes it: pick one")
    max_queued = flag_or_setting(args.max_queued, settings.max_queued)
    if max_queued < 1:
        raise ValueError("--max-queued must be >= 1")
    task = Task(args.task)
    model = args.model or task_kind(task).model_spec(settings)
    # The flags differ by task: each task's own, the other's refused.
    if task is Task.RERANK:
        check_no_embed_flags(args)
        options, rerank = EncodeOptions(), rerank_options_from_args(args)
    else:
        if args.query_max_length is not None:
            raise ValueError("--query-max-length is for --task rerank")
        options, rerank = options_from_args(args), None
    tenant, priority = job_tenant(args, settings)
    return SubmitRequest(
        inputs=list(args.inputs),
        out=args.out,
        model=model,
        task=task,
        rerank=rerank,
        options=options,
        tenant=tenant,
        priority=priority,
        queue=job_queue(args, settings, tenant, model),
        limits=limits,
        max_queued=max_queued,
        input_format=args.input_format,
        id_field=args.id_field,
        text_field=args.text_field,
        keep_fields=parse_keep_fields(args.keep_fields),
        overwrite=args.overwrite,
        resume=args.resume,
        poll_seconds=settings.poll_seconds,
        job_ttl=settings.job_ttl,
        max_record_bytes=max_record_bytes(args, settings),
        inline_shards=args.inline_shards,
        reuse=args.reuse,
        precision=None if args.precision in (None, "auto") else args.precision,
    )


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.broker.redis_checks import check_redis
    from producers.submit import submit_job
    from workers.app import shard_publisher

    try:
        request = submit_request(args, settings)
    except (ValueError, ValidationError) as exc:
        return usage_error(exc)
    store = job_store(settings)
    check_redis(store.redis, settings.allow_eviction)  # before anything is queued

    def registered(job_id: str) -> None:
        print(f"m3pipe submit: job {job_id} registered; enqueueing shards", file=sys.stderr)

    # What is loaded by now lives as long as the process: kept out of the collector's
    # full passes, which otherwise scan it every ~70k documents (~0.5 us a document).
    gc.freeze()
    result = submit_job(request, store, shard_publisher(settings), registered)
    resumed = f" ({result.skipped} already done, kept)" if request.resume else ""
    reused = ""
    if result.reuse is not None:
        planned, dropped = result.reuse
        reused = f"; {planned:,} to copy from {request.reuse}, {dropped:,} of it dropped"
    print(
        f"m3pipe submit: {result.shards} shard(s){resumed}, {result.counts.documents} "
        f"{request.task.item}s on {request.queue}; {result.counts.rejected} rejected{reused}",
        file=sys.stderr,
    )
    print(result.job_id)
    return EXIT_OK


# -- status, wait, jobs, cancel -------------------------------------------------------------
def _known_job(store: JobStore, job_id: str) -> bool:
    if store.exists(job_id):
        return True
    print(
        f"m3pipe: no job {job_id!r} in Redis (an ended job is forgotten after M3PIPE_JOB_TTL)",
        file=sys.stderr,
    )
    return False


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.job_view import StatusBar, describe
    from pipeline.jobs.watch import follow

    if args.job is None:
        return cmd_jobs(argparse.Namespace(limit=20, json=args.json, tenant=None), settings)
    store = job_store(settings)
    if not _known_job(store, args.job):
        return EXIT_FAILED
    if args.watch:
        bar = StatusBar(enabled=sys.stderr.isatty())
        try:
            status = follow(store, args.job, poll_seconds=1.0, on_status=bar)
        finally:
            bar.close()
    else:
        status = store.status(args.job)
    orphans = [] if status.state.finished else orphaned_shards(store, args.job)
    reasons = failure_reasons(store, args.job) if status.shards.failed else []
    unserved = None
    if not status.state.finished and status.shards.queued:
        unserved = no_live_worker_serves(store, args.job, settings)
    if args.json:
        extra = {
            "lost": status.lost_shards,
            "orphaned": orphans,
            "failures": [{"reason": r.reason, "shards": r.shards} for r in reasons],
            "unserved": unserved,
        }
        print(json.dumps({**status.model_dump(mode="json"), **extra}, indent=2))
    else:
        print(describe(status))
        if reasons:
            print("failed shards, by reason:")
            print("\n".join(describe_failures(reasons)))
        if unserved:
            print(f"unserved: {unserved}")
        if status.lost_shards:
            print(f"lost: {lost_advice(args.job, status.lost_shards)}")
        if orphans:
            print(
                f"orphaned: {len(orphans)} shard(s) queued or running with no message anywhere "
                f"({', '.join(map(str, orphans[:10]))}); `m3pipe retry {args.job}` re-sends "
                f"the ones whose message m3pipe kept, `m3pipe repair {args.job}` any of them"
            )
    return EXIT_OK


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.exit_codes import job_exit_code
    from pipeline.jobs.watch import follow

    store = job_store(settings)
    if not _known_job(store, args.job):
        return EXIT_FAILED
    seen: deque[JobStatus] = deque(maxlen=2)  # the last two statuses read
    quiet_since = time.monotonic()  # when the shard counts last changed

    def stalled() -> None:
        """JobStalled once nothing can run the rest: lost shards in two looks in a row, or
        queued or running shards with no message anywhere, looked for after each quiet spell
        (the look reads the queue: not on every poll)."""
        nonlocal quiet_since
        if len(seen) >= 2 and seen[-1].lost_shards and seen[-2].lost_shards:
            raise JobStalled(lost_advice(args.job, seen[-1].lost_shards))
        now = time.monotonic()
        if len(seen) >= 2 and seen[-1].shards != seen[-2].shards:
            quiet_since = now
        active = bool(seen) and (seen[-1].shards.queued + seen[-1].shards.running) > 0
        if active and now - quiet_since >= _quiet_spell(settings):
            quiet_since = now
            orphans = orphaned_shards(store, args.job)
            if orphans:
                raise JobStalled(orphan_advice(args.job, orphans))

    try:
        status = follow(store, args.job, poll_seconds=settings.poll_seconds,
                        timeout=args.timeout, check=stalled, on_status=seen.append)  # fmt: skip
    except JobStalled as exc:
        print(f"m3pipe wait: job {args.job} cannot end: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not status.state.finished:
        print(f"m3pipe wait: job {args.job} still {status.state.value}", file=sys.stderr)
        return EXIT_TIMEOUT
    ended = f"m3pipe wait: job {args.job} {status.state.value}"
    if status.error:
        ended += f": {status.error}"
    print(ended, file=sys.stderr)
    if status.shards.failed:
        print(f"failed shards ({status.shards.failed}), by reason:", file=sys.stderr)
        print("\n".join(describe_failures(failure_reasons(store, args.job))), file=sys.stderr)
    return job_exit_code(status)


class JobStalled(Exception):
    """The job cannot end as its state stands in Redis."""


def _quiet_spell(settings: Settings) -> float:
    """How long `wait` sees no shard change before it looks for queued or running shards
    with no message: 60 polls (30 s by default)."""
    return 60 * settings.poll_seconds


def orphan_advice(job_id: str, orphans: list[int]) -> str:
    return (
        f"{len(orphans)} shard(s) of job {job_id} are queued or running with no message "
        f"anywhere ({', '.join(map(str, orphans[:10]))}): lost (a failover, a producer killed "
        f"between registering and sending). `m3pipe repair {job_id}` sends them again"
    )


def lost_advice(job_id: str, lost: int) -> str:
    return (
        f"{lost} shard(s) of job {job_id} have no state in Redis: it lost writes (a failover "
        f"that dropped the last ones, an eviction). `m3pipe repair {job_id}` marks the "
        "written ones done from their part files and sends the others again"
    )


def no_live_worker_serves(
    store: JobStore, job_id: str, settings: Settings, timeout: float = 1.0
) -> str | None:
    """Why no shard of the job can run now, if no live worker serves its model: the
    workers answering a control ping within `timeout`, and the model each registered."""
    from workers.app import live_workers

    spec = store.spec(job_id)
    field = "model" if spec.task is Task.EMBED else "rerank_model"
    live = live_workers(settings, timeout)
    served = {name: store.worker_record(name).get(field) for name in live}
    if any(model == spec.model for model in served.values()):
        return None
    if not served:
        return f"no live worker answers (job {job_id} needs {spec.task.value} model {spec.model!r})"
    others = ", ".join(f"{name} serves {model!r}" for name, model in sorted(served.items()))
    return f"no live worker serves {spec.task.value} model {spec.model!r} ({others})"


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.job_view import one_line

    store = job_store(settings)
    statuses = []
    for job_id in store.job_ids(args.limit):
        with contextlib.suppress(JobNotFound):  # expired since it was listed
            statuses.append(store.status(job_id))
    if args.tenant:
        statuses = [s for s in statuses if s.tenant == args.tenant]
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in statuses], indent=2))
    elif not statuses:
        print("no jobs", file=sys.stderr)
    for status in [] if args.json else statuses:
        print(one_line(status))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    store = job_store(settings)
    if not _known_job(store, args.job):
        return EXIT_FAILED
    state = store.cancel(args.job)
    print(f"m3pipe cancel: job {args.job} is {state.value}", file=sys.stderr)
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.jobs.letters import LetterLost, read_letter
    from pipeline.jobs.resume import message_digest
    from pipeline.storage.location import open_location
    from schemas.job import ShardMessage
    from workers.app import shard_publisher

    store = job_store(settings)
    if not _known_job(store, args.job):
        return EXIT_FAILED
    letters = store.dead_letters(args.job)
    spec = store.spec(args.job)
    publish = shard_publisher(settings)
    out = functools.cache(lambda: open_location(spec.out))  # opened once, if a letter needs it
    sent = 0
    lost: list[int] = []

    def kept_message(shard: int, letter: str | None) -> ShardMessage | None:
        """The message a letter keeps; None (the shard counted lost) if there is none."""
        try:
            if letter is not None:
                message = read_letter(letter, out())
                registered = store.registered_digests(args.job, shard)[1]
                if registered is None or registered == message_digest(message):
                    return message
                print(f"m3pipe retry: shard {shard}: its letter is not the message "
                      "registered for it: not re-sent", file=sys.stderr)  # fmt: skip
        except LetterLost as exc:
            print(f"m3pipe retry: shard {shard}: {exc}", file=sys.stderr)
        lost.append(shard)
        return None

    for shard, raw in sorted(letters.items()):
        message = kept_message(shard, raw)
        if message is not None and store.reopen_shard(args.job, shard):
            publish(message, spec.queue, spec.priority)
            sent += 1
    orphans = [] if store.state(args.job).finished else orphaned_shards(store, args.job)
    for shard in orphans:
        message = kept_message(shard, store.retry_letter(args.job, shard))
        if message is not None:
            publish(message, spec.queue, spec.priority)
            sent += 1
    print(f"m3pipe retry: job {args.job}: {sent} shard(s) re-enqueued", file=sys.stderr)
    if lost:
        print(
            f"m3pipe retry: {len(lost)} shard(s) have no kept message "
            f"({', '.join(map(str, lost[:10]))}): `m3pipe repair {args.job}` sends queued "
            "ones again from the job's plan; otherwise `m3pipe cancel`, then `m3pipe submit "
            "--resume` with the same inputs and --out redoes them",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK if sent or not (letters or orphans) else EXIT_FAILED


def cmd_repair(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.jobs.repair import repair_job
    from pipeline.storage.location import open_location
    from workers.app import shard_publisher

    store = job_store(settings)
    if not _known_job(store, args.job):
        return EXIT_FAILED
    report = repair_job(store, args.job, shard_publisher(settings))
    inputs = 0
    for url in store.spec(args.job).inputs:
        with contextlib.suppress(OSError):
            inputs += open_location(url).size()
    print(
        f"m3pipe repair: job {args.job}: {report.reconciled} shard(s) found written and "
        f"marked done, {report.resent} sent again ({report.bytes_to_read:,} of the inputs' "
        f"{inputs:,} bytes to read again)"
        + (f"; the job is {report.final.value}" if report.final is not None else ""),
        file=sys.stderr,
    )
    if report.unplanned:
        shown = ", ".join(map(str, report.unplanned[:10]))
        print(
            f"m3pipe repair: {len(report.unplanned)} shard(s) not in the job's plan ({shown}): "
            f"they carry their documents; `m3pipe cancel {args.job}`, then `m3pipe submit "
            "--resume` with the same inputs and --out redoes them",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.job_view import StatusBar
    from pipeline.local.run import run_local

    try:
        request = replace(submit_request(args, settings), command="run")
    except (ValueError, ValidationError) as exc:
        return usage_error(exc)
    if args.workers is not None and args.workers < 1:
        return usage_error("--workers must be >= 1")
    if args.slots is not None and not 1 <= args.slots <= MAX_WORKER_SLOTS:
        return usage_error(f"--slots must be 1-{MAX_WORKER_SLOTS}")
    bar = StatusBar(enabled=not args.quiet and sys.stderr.isatty())
    try:
        return run_local(
            request,
            settings,
            workers=args.workers,
            force_cpu=args.device == "cpu",
            precision=args.precision or settings.precision,
            slots=args.slots,
            on_status=bar,
        )
    finally:
        bar.close()
