"""One shard through the engine: the checklist a worker runs for each message.

Load the job -> mark running -> encode -> write the file -> mark done -> end the job if last.
No Celery here: workers/tasks.py maps the outcomes to acks, retries and failures.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pipeline.engine.stats import BatchStats
from pipeline.errors import (
    ForgedMessage,
    PermanentError,
    PipelineError,
    StaleAttempt,
    UnregisteredShard,
    WrongWorker,
)
from pipeline.jobs.finish import finalize_if_complete
from pipeline.jobs.letters import make_letter
from pipeline.jobs.plan import PlanReader
from pipeline.jobs.repair import finished_in_output
from pipeline.jobs.resume import documents_digest, message_digest
from pipeline.jobs.shard_report import ShardReport
from pipeline.jobs.store import ABSENT, JobStore
from pipeline.runtime.part_stream import reuse_stream, stream_part
from pipeline.runtime.worker_runtime import WorkerRuntime
from pipeline.storage.location import Location
from pipeline.storage.output_dir import check_job_owns
from pipeline.storage.output_roots import allowed_input, allowed_output
from pipeline.storage.sink import part_name
from pipeline.tasks import task_kind
from schemas.job import JobSpec, JobState, ShardMessage, ShardState

log = logging.getLogger(__name__)

_ACTIVE = (ShardState.QUEUED.value, ShardState.RUNNING.value)


@dataclass
class ShardOutcome:
    state: ShardState | None  # None: Redis has no state for it (lost: failover, eviction)
    detail: str = ""
    rows: int = 0
    tokens: int = 0
    stats: BatchStats | None = None  # set when this delivery ran the shard


def run_shard(message: ShardMessage, runtime: WorkerRuntime) -> ShardOutcome:
    store, job_id, shard = runtime.store, message.job_id, message.shard
    spec = runtime.job_spec(job_id)
    registered, registered_message = store.registered_digests(job_id, shard)
    runtime.models.check_job_model(spec.task, job_id, spec.model)
    # Hashed once: stale check and file facts. A reference carries the digest of the
    # documents it points at; reading them back checks it.
    digest = message.ref.digest if message.ref is not None else documents_digest(message.items)
    if registered is None and store.shard_state(job_id, shard) == ABSENT:
        found = registered_again(runtime, spec, message)
        if found is None:
            raise UnregisteredShard(f"job {job_id} never registered shard {shard}")
        if found is ShardState.DONE:
            return ShardOutcome(ShardState.DONE, "found written: marked done from its part")
        registered, registered_message = store.registered_digests(job_id, shard)
    if registered is not None and registered != digest:
        # Left in the queue by an earlier submission of this job (cancelled, then resumed
        # with changed input): running it would write the old documents.
        log.warning("job %s shard %d: stale message, not the registered documents; skipped",
                    job_id, shard)  # fmt: skip
        return ShardOutcome(_state_now(store, job_id, shard), "stale message")
    if registered_message is not None and registered_message != message_digest(message):
        # The registered documents, but not the message registered for them (a forged or
        # altered copy): refused before anything about the shard changes.
        raise ForgedMessage(f"job {job_id} shard {shard}: not the message registered for it")
    if message.task is not spec.task:
        raise PermanentError(f"job {job_id} is a {spec.task.value} job: this shard is not")
    if store.state(job_id) is JobState.CANCELLED:
        store.mark_shard(job_id, shard, ShardState.CANCELLED, _ACTIVE)
        return ShardOutcome(ShardState.CANCELLED, "job cancelled")
    check_serves(runtime, spec)  # WrongWorker: for another worker, nothing recorded

    started = time.time()
    running = {"worker": runtime.hostname, "documents": message.size, "started": started}
    changed, previous = store.mark_shard(job_id, shard, ShardState.RUNNING, _ACTIVE, running)
    if not changed:
        # Delivered again after it ended (e.g. redelivery after a slow ack): nothing to do.
        if previous == ABSENT:  # registered, but its state is gone from Redis
            log.warning("job %s shard %d: Redis has no state for it (lost); skipped",
                        job_id, shard)  # fmt: skip
            return ShardOutcome(None, "state lost")
        log.info("job %s shard %d already %s; skipped", job_id, shard, previous)
        return ShardOutcome(ShardState(previous), "already ended")
    attempt = store.count_attempt(job_id, shard)
    token = store.take_ownership(job_id, shard)
    if attempt > runtime.max_attempts:
        # Earlier deliveries never finished: the worker died or lost the shard each time.
        reason = (
            f"dead-lettered: {attempt - 1} deliveries never finished "
            "(the worker died or lost the shard each time)"
        )
        fail_shard(runtime, message, reason, runtime.hostname)
        return ShardOutcome(ShardState.FAILED, reason)

    # The shard in hand, for `m3pipe probe`: a shard held far longer than any shard may
    # take means a wedged worker (a hung device call), which a ping alone would not show.
    store.note_busy(runtime.hostname, f"{job_id}/{shard}", started, runtime.slot)
    runtime.metrics.shard_started.set(started)
    try:
        return _encode_and_record(message, spec, runtime, started, digest, token)
    except StaleAttempt as exc:
        log.warning("job %s shard %d: %s", job_id, shard, exc)
        return ShardOutcome(_state_now(store, job_id, shard), "stale attempt")
    finally:
        runtime.metrics.shard_started.set(0)
        store.note_idle(runtime.hostname, runtime.slot)


def registered_again(
    runtime: WorkerRuntime, spec: JobSpec, message: ShardMessage
) -> ShardState | None:
    """A message whose shard Redis has no record of, neither registration nor state (a
    failover that dropped the last writes, an eviction), taken up again when the job's
    shard plan (pipeline/jobs/plan.py) holds exactly this message: DONE if its part is
    written (marked done from the part's footer, as `m3pipe repair` does), else QUEUED
    (registered again, as submit did). None when the plan cannot vouch for it (a shard
    that carries its documents, no plan, another message): dropped, as a forged one is."""
    store, job_id, shard = runtime.store, message.job_id, message.shard
    if message.ref is None:  # carried its documents: not in the plan
        return None
    try:
        out = allowed_output(spec.out, runtime.output_roots)
    except PipelineError:
        return None
    planned = PlanReader(out).message(shard)
    if planned is None or message_digest(planned) != message_digest(message):
        return None
    if finished_in_output(store, job_id, shard, message.ref.digest, out):
        log.warning("job %s shard %d: Redis had lost it; its part is written: marked done",
                    job_id, shard)  # fmt: skip
        finalize_if_complete(store, job_id)
        return ShardState.DONE
    store.queue_shard(job_id, shard, message.ref.digest, message.size, message_digest(message))
    log.warning("job %s shard %d: Redis had lost its registration; registered again from "
                "the job's plan", job_id, shard)  # fmt: skip
    return ShardState.QUEUED


def _state_now(store: JobStore, job_id: str, shard: int) -> ShardState | None:
    """The shard's state in Redis now; None when it has none (lost with a failover that
    dropped writes, or evicted)."""
    current = store.shard_state(job_id, shard)
    return None if current == ABSENT else ShardState(current)


# What must be the same for every shard of a job: the weights, their revision, and the
# compute precision (unless the job accepts any).
_BINDING = ("model", "model_revision", "model_fingerprint", "compute_dtype")
_PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def check_serves(runtime: WorkerRuntime, spec: JobSpec) -> None:
    """WrongWorker unless this worker computes what the job's other shards were computed
    with: the first worker to run a shard pins the job's model identity (and precision,
    when the job did not fix one at submit); a worker of other weights or precision leaves
    the shard for one that matches."""
    job_id = spec.job_id
    mine = runtime.engine(spec).file_metadata()
    wanted = _PRECISION_DTYPES.get(spec.precision or "")
    if wanted is not None and mine.get("compute_dtype") != wanted:
        raise WrongWorker(
            f"job {job_id} waits for a worker computing in {spec.precision} "
            f"(this one computes in {mine.get('compute_dtype')})"
        )
    pinned = runtime.store.pin_model_metadata(job_id, mine)
    binding = _BINDING if spec.precision != "any" else _BINDING[:-1]
    differs = [key for key in binding if pinned.get(key) != mine.get(key)]
    if differs:
        wanted_identity = ", ".join(f"{key} {pinned.get(key)!r}" for key in differs)
        this_identity = ", ".join(f"{mine.get(key)!r}" for key in differs)
        raise WrongWorker(
            f"job {job_id} waits for a worker with {wanted_identity}, as its other shards "
            f"(this one has {this_identity})"
        )
    if spec.precision == "any":
        runtime.store.note_compute_dtype(job_id, str(mine.get("compute_dtype")))


def _encode_and_record(
    message: ShardMessage,
    spec: JobSpec,
    runtime: WorkerRuntime,
    started: float,
    digest: str,
    token: str,
) -> ShardOutcome:
    """Encode, write the part file atomically, mark the shard done, end the job if last."""
    store, job_id, shard = runtime.store, message.job_id, message.shard
    out = allowed_output(spec.out, runtime.output_roots)
    if not out.is_dir():  # submit wrote _job.json there, so an object-store prefix exists too
        raise PermanentError(f"output directory {out} does not exist on {runtime.hostname}")
    if message.ref is not None:  # the job record names the inputs: confined like its output
        for index in {segment.input for segment in message.ref.segments}:
            if index < len(spec.inputs):
                allowed_input(spec.inputs[index], runtime.input_roots)
    engine = runtime.engine(spec)
    kind = task_kind(spec.task)
    items = kind.shard_items(message, spec)  # read from the inputs for a ref
    documents = len(items)
    name = part_name(shard)

    def fence() -> None:
        if not store.owns(job_id, shard, token):
            raise StaleAttempt("another delivery took this shard over or ended it: not written")
        check_job_owns(out, job_id)  # another run took the directory: fails the shard

    def facts(stats: BatchStats, rows: int) -> dict[str, Any]:
        """In the part's footer: what --resume checks, and who made it, how."""
        return {
            "job_id": job_id,
            "shard": shard,
            "digest": digest,
            "documents": documents,
            "rows": rows,
            "tokens": stats.tokens,
            "worker": runtime.hostname,
            "encode_seconds": round(time.time() - started, 3),
            "encoded_at": round(time.time(), 3),
            "padding_efficiency": round(stats.padding_efficiency, 4),
        }

    pieces = kind.pieces(items, runtime.piece_documents)
    reuse = None
    if message.reuse and spec.reuse is not None:  # copies read and merged piece by piece
        reuse = reuse_stream(message, spec, runtime, kind, engine, items, pieces)
    stats, rows, written = stream_part(
        kind, engine, items, reuse.to_compute() if reuse is not None else pieces, spec,
        out / name, fence, facts, runtime.direct_writes,
        reuse.merged if reuse is not None else None,
    )  # fmt: skip
    reused = reuse.reused if reuse is not None else 0

    store.set_model_metadata(job_id, engine.file_metadata())
    # Its counts, a fixed record in Redis: the part's name follows from the shard number,
    # and the worker and timings are in the part's footer.
    report = ShardReport(
        documents=documents,
        rows=rows,
        tokens=stats.tokens,
        part_bytes=written.size(),
        seconds=stats.seconds,
        reused=reused if message.reuse is not None else None,
    )
    if runtime.wait_replicas:
        _, _, replicated = store.mark_done_replicated(
            job_id, shard, _ACTIVE, report, runtime.wait_replicas, runtime.wait_ms
        )
        if replicated < runtime.wait_replicas:
            runtime.metrics.unreplicated_shards.inc()
            log.warning("job %s shard %d: done, but %d of %d replica(s) had it after %d ms "
                        "(M3PIPE_REDIS_WAIT_REPLICAS): a failover now could lose it",
                        job_id, shard, replicated, runtime.wait_replicas,
                        runtime.wait_ms)  # fmt: skip
    else:
        store.mark_done(job_id, shard, _ACTIVE, report)
    store.release_shard(job_id, shard)
    finalize_if_complete(store, job_id)
    return ShardOutcome(ShardState.DONE, name, rows=rows, tokens=stats.tokens, stats=stats)


def fail_shard(runtime: WorkerRuntime, message: ShardMessage, reason: str, worker: str) -> None:
    """Dead-letter a shard: failed for good, its message kept for `m3pipe retry` (in Redis,
    or in the job's output directory when it carries documents: pipeline/jobs/letters.py)."""
    store = runtime.store
    info = {"worker": worker, "error": reason[:2000], "failed_at": time.time()}
    changed, _ = store.mark_shard(message.job_id, message.shard, ShardState.FAILED, _ACTIVE, info)
    if changed:
        out = letters_home(runtime, message.job_id)
        store.dead_letter(message.job_id, message.shard, make_letter(message, out))
    store.release_shard(message.job_id, message.shard)
    finalize_if_complete(store, message.job_id)


def letters_home(runtime: WorkerRuntime, job_id: str) -> Location | None:
    """The job's output directory if this worker may write there, else None."""
    try:
        return allowed_output(runtime.job_spec(job_id).out, runtime.output_roots)
    except PipelineError:
        return None


def requeue_shard(runtime: WorkerRuntime, message: ShardMessage, reason: str, attempt: int) -> None:
    """Record that a shard goes back to the queue for another attempt; its message is kept
    until the shard ends, so `m3pipe retry` can re-send it if the retry is ever lost (in
    Redis, or in the output directory when it carries documents, as a dead letter is)."""
    store = runtime.store
    out = letters_home(runtime, message.job_id)
    store.keep_retry_letter(message.job_id, message.shard, make_letter(message, out))
    info = {"retry": attempt, "last_error": reason[:2000]}
    store.mark_shard(message.job_id, message.shard, ShardState.QUEUED, _ACTIVE, info)
