"""`m3pipe submit` (register a job, enqueue its shards) and `m3pipe run` (the same job with
its own Redis and workers): the job's request from the command line."""

from __future__ import annotations

import argparse
import gc
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from pydantic import ValidationError

from pipeline.cli.options import (
    checked_queue,
    job_store,
    max_record_bytes,
    options_from_args,
    parse_keep_fields,
    usage_error,
)
from pipeline.cli.rerank import check_no_embed_flags, rerank_options_from_args
from pipeline.cli.tenants import job_tenant
from pipeline.exit_codes import EXIT_OK
from pipeline.settings import MAX_WORKER_SLOTS, Settings
from schemas.job import Task
from schemas.options import EncodeOptions
from schemas.tenant import tenant_queue

if TYPE_CHECKING:
    from producers.submit import SubmitRequest


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
