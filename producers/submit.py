"""Submitting a job: stream inputs -> validate -> cut shards -> enqueue, with backpressure.

Nothing is held in memory beyond the shard being cut: the producer waits while the job
already has `max_queued` shards waiting in Redis, so Redis memory stays bounded too
(producers/admission.py). A shard's message: producers/messages.py; `--resume`:
producers/resume.py.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from redis.exceptions import RedisError

from pipeline.errors import InputError, JobLost, JobNotFound, ReuseError, SubmitCancelled
from pipeline.inputs.indexes.reuse_index import ReuseIndex, open_reusable
from pipeline.inputs.intake import IntakeCounts, RejectSink
from pipeline.inputs.readers.lines import DEFAULT_MAX_RECORD_BYTES
from pipeline.inputs.references import ReferencedShard
from pipeline.inputs.sharding import ShardLimits
from pipeline.jobs.finish import finalize_if_complete
from pipeline.jobs.plan import PlanWriter
from pipeline.jobs.resume import documents_digest
from pipeline.jobs.store import DEFAULT_JOB_TTL, JobStore
from pipeline.storage.location import Location, open_location
from pipeline.storage.output_dir import (
    JOB_FILE,
    RejectLog,
    check_output_dir,
    prepare_output_dir,
    write_json_atomic,
)
from pipeline.storage.output_lease import take_lease
from pipeline.tasks import Reading, task_kind
from producers.admission import admit, wait_for_room
from producers.messages import Publish, enqueue, shard_message
from producers.resume import already_done, remove_parts_from, spec_to_resume
from schemas.document import Document
from schemas.job import JobSpec, JobState, Task
from schemas.options import EncodeOptions
from schemas.pair import Pair, RerankOptions
from schemas.tenant import DEFAULT_TENANT, Priority


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass
class SubmitRequest:
    inputs: list[Path | str]  # local paths or URLs (s3://...)
    out: Path | str
    model: str
    options: EncodeOptions
    queue: str
    limits: ShardLimits
    max_queued: int
    input_format: str = "auto"
    id_field: str = "id"
    text_field: str = "text"
    keep_fields: tuple[str, ...] = ()
    overwrite: bool = False
    resume: bool = False  # same spec, same --out: redo only the shards without a good file
    job_id: str | None = None
    poll_seconds: float = 0.5
    task: Task = Task.EMBED
    rerank: RerankOptions | None = None  # task rerank: truncation and batching
    tenant: str = DEFAULT_TENANT  # `queue` is already this tenant's queue
    priority: Priority = Priority.NORMAL
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES  # larger records are rejected as read
    command: Literal["submit", "run"] = "submit"  # what makes the job, for its manifest
    job_ttl: int = DEFAULT_JOB_TTL  # seconds its Redis keys are kept once it ends
    inline_shards: bool = False  # text in the messages even where a reference would do
    reuse: Path | str | None = None  # a previous output to copy unchanged documents from
    precision: Literal["fp32", "fp16", "bf16", "any"] | None = None  # see JobSpec.precision

    def reading(self) -> Reading:
        return Reading(
            input_format=self.input_format,
            id_field=self.id_field,
            text_field=self.text_field,
            keep_fields=self.keep_fields,
            max_record_bytes=self.max_record_bytes,
        )


@dataclass
class SubmitResult:
    job_id: str
    shards: int
    counts: IntakeCounts
    state: JobState | None  # the final state if the job already ended
    skipped: int = 0  # shards found done by --resume
    reuse: tuple[int, int] | None = None  # --reuse: (documents to copy, previous ones dropped)


def submit_job(
    request: SubmitRequest,
    store: JobStore,
    publish: Publish,
    on_registered: Callable[[str], None] | None = None,
) -> SubmitResult:
    """Register the job, enqueue every shard, record the totals; returns once all are queued."""
    inputs = [open_location(path) for path in request.inputs]
    kind = task_kind(request.task)
    formats = [kind.detect_format(location, request.input_format) for location in inputs]
    admit(store, request.tenant)
    previous = None
    if request.reuse is not None:
        if not task_kind(request.task).reusable:
            raise ReuseError(f"--reuse does not apply to {request.task.value} jobs")
        previous = open_reusable(
            request.reuse, request.out, request.model, request.options, request.keep_fields
        )
    out = check_output_dir(request.out, request.overwrite, request.resume)
    spec = JobSpec(
        job_id=request.job_id or new_job_id(),
        task=request.task,
        tenant=request.tenant,
        priority=request.priority,
        rerank=request.rerank,
        inputs=[location.url for location in inputs],
        input_format=request.input_format,
        out=out.url,
        model=request.model,
        options=request.options,
        id_field=request.id_field,
        text_field=request.text_field,
        keep_fields=list(request.keep_fields),
        queue=request.queue,
        shard_docs=request.limits.items,
        shard_bytes=request.limits.bytes,
        shard_tokens=request.limits.tokens,
        max_queued=request.max_queued,
        created_at=time.time(),
        command=request.command,
        max_record_bytes=request.max_record_bytes,
        reuse=previous.location.url if previous is not None else None,
        precision=request.precision,
    )
    if request.resume:
        spec = spec_to_resume(spec, out, store)
    job_id = spec.job_id
    # The job owns the directory until it ends; only then is anything in it deleted.
    lease = take_lease(out, command=request.command, job_id=job_id, job_alive=store.is_active)
    try:
        prepare_output_dir(out, request.overwrite, request.resume)
        write_json_atomic(out / JOB_FILE, spec.model_dump(mode="json"))
        store.create(spec, request.job_ttl)
    except BaseException:
        lease.release()
        raise
    if on_registered is not None:
        on_registered(job_id)
    counts = IntakeCounts()
    shards = skipped = 0
    cancelled = False
    # Shards may point at these inputs (by index in the spec) instead of carrying text.
    references = None if request.inline_shards else {loc.uri: i for i, loc in enumerate(inputs)}
    plan = PlanWriter(out)  # what was sent, for `m3pipe repair`
    reuse: tuple[int, int] | None = None
    try:
        with contextlib.ExitStack() as stack:
            rejects = stack.enter_context(RejectLog(out))
            index = stack.enter_context(ReuseIndex(previous)) if previous is not None else None
            try:
                for shard in job_shards(request, spec, inputs, formats, rejects, counts):
                    if isinstance(shard, ReferencedShard):
                        digest, documents = shard.ref.digest, shard.ref.documents
                    else:
                        digest, documents = documents_digest(shard), len(shard)
                    # Planned for every shard, resumed or not, so the counts cover the job.
                    runs = None
                    if index is not None:
                        runs = index.plan(cast(list[Document], shard), request.keep_fields)
                    if request.resume and already_done(
                        store, out, job_id, shards, documents, digest
                    ):
                        skipped += 1
                    else:
                        wait_for_room(
                            store, job_id, request.max_queued, request.poll_seconds, request.tenant
                        )
                        message = shard_message(job_id, shards, shard, digest, references, runs)
                        enqueue(store, publish, message, request.queue, request.priority, digest)
                        plan.add(message)
                    shards += 1
            except SubmitCancelled:
                cancelled = True
            plan.flush()
            if index is not None:
                reuse = (index.reused, index.dropped)
                store.set_reuse_plan(job_id, reused=index.reused, dropped=index.dropped)
        if request.resume and not cancelled:
            remove_parts_from(out, shards)
        if not counts.balanced():
            raise AssertionError("record accounting does not add up")  # a bug, never input
        store.set_submitted(
            job_id,
            shards=shards,
            documents=counts.documents,
            input_records=counts.input_records,
            rejected=counts.rejected,
        )
    except JobNotFound as exc:
        lease.release()
        raise JobLost(
            f"job {job_id} vanished from Redis while it was submitted (Redis restarted "
            "without persistence, or its keys were evicted): submit again with --resume "
            "(the same inputs and --out), which keeps the shards already written"
        ) from exc
    except BaseException as exc:
        # Lost meanwhile, or Redis refusing writes: the first error tells more.
        with contextlib.suppress(JobNotFound, RedisError):
            store.end(job_id, JobState.FAILED, f"submission failed: {exc}")
        lease.release()  # the job has ended: the directory is free again
        raise
    if cancelled:
        return SubmitResult(job_id, shards, counts, JobState.CANCELLED, skipped, reuse)
    if counts.input_records == 0:
        store.end(job_id, JobState.FAILED, "the inputs hold no records")
        raise InputError("the inputs hold no records (empty files?)")
    final = finalize_if_complete(store, job_id)
    return SubmitResult(job_id, shards, counts, final, skipped, reuse)


def job_shards(
    request: SubmitRequest,
    spec: JobSpec,
    inputs: list[Location],
    formats: list[str],
    rejects: RejectSink,
    counts: IntakeCounts,
) -> Iterator[list[Document]] | Iterator[list[Pair]] | Iterator[ReferencedShard]:
    """The job's shards, cut from its inputs as its task reads them; rejects on the way.

    By reference alone where the task can (every input a plain JSONL file, shards not
    inline, nothing reused: `--reuse` plans each shard from its documents)."""
    kind = task_kind(spec.task)
    reading = request.reading()
    options = kind.job_options(spec)
    if not request.inline_shards and request.reuse is None:
        referenced = kind.referenced_shards(
            inputs, formats, reading, options, request.limits, rejects, counts
        )
        if referenced is not None:
            return referenced
    sources = [
        (location.uri, kind.read(location, fmt, reading))
        for location, fmt in zip(inputs, formats, strict=True)
    ]
    return kind.shards(sources, options, request.limits, rejects, counts, strict=True)
