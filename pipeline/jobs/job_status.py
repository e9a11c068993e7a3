"""A job's status from its Redis hash's fields: its state, shard counts, documents and rows,
the tokens a second of this run (shards `--resume` found done count as done, not towards the
speed), an ETA, and what it waits for when a worker handed a shard back lately."""

from __future__ import annotations

import time
from collections.abc import Mapping

from pipeline.jobs.redis_records import as_float, as_int
from schemas.job import JobSpec, JobState, JobStatus, ShardCounts


def status_from_fields(job_id: str, fields: Mapping[str, str]) -> JobStatus:
    """The status of job `job_id` from its hash (which holds its spec)."""
    spec = JobSpec.model_validate_json(fields["spec"])
    submitted = fields.get("submitted") == "1"
    started = as_float(fields.get("started_at"))
    finished = as_float(fields.get("finished_at"))
    tokens = as_int(fields.get("tokens_done"))
    documents_done = as_int(fields.get("documents_done"))
    documents = (
        as_int(fields.get("documents")) if submitted else as_int(fields.get("documents_enqueued"))
    )
    end = finished or time.time()
    elapsed = end - started if started else 0.0
    # Shards found done by --resume count as done, but not towards this run's speed.
    encoded_tokens = tokens - as_int(fields.get("tokens_resumed"))
    encoded_documents = documents_done - as_int(fields.get("documents_resumed"))
    rate = encoded_tokens / elapsed if elapsed > 0 else 0.0
    eta = None
    if submitted and started and encoded_documents > 0 and not finished:
        eta = (documents - documents_done) * elapsed / encoded_documents
    return JobStatus(
        job_id=job_id,
        task=spec.task,
        tenant=spec.tenant,
        priority=spec.priority,
        state=JobState(fields["state"]),
        submitted=submitted,
        shards=ShardCounts(
            total=as_int(fields.get("shards_total")) if submitted else None,
            queued=as_int(fields.get("n_queued")),
            running=as_int(fields.get("n_running")),
            done=as_int(fields.get("n_done")),
            failed=as_int(fields.get("n_failed")),
            cancelled=as_int(fields.get("n_cancelled")),
        ),
        input_records=as_int(fields.get("input_records")) if submitted else None,
        documents=documents,
        documents_done=documents_done,
        rows_done=as_int(fields.get("rows_done")),
        rejected=as_int(fields.get("rejected")) if submitted else None,
        tokens_done=tokens,
        tokens_per_second=round(rate, 1),
        eta_seconds=round(eta, 1) if eta is not None else None,
        created_at=float(fields["created_at"]),
        started_at=started,
        finished_at=finished,
        out=spec.out,
        queue=spec.queue,
        model=spec.model,
        error=fields.get("error"),
        waiting=_recent_waiting(fields),
        expires_at=as_float(fields.get("expires_at")),
        documents_reused=as_int(fields.get("documents_reused")) if spec.reuse else None,
        documents_dropped=(
            as_int(fields.get("documents_dropped"))
            if spec.reuse and "documents_dropped" in fields
            else None
        ),
    )


WAITING_SHOWN_SECONDS = 120.0  # a hand-back older than this no longer describes the job


def _recent_waiting(fields: Mapping[str, str]) -> str | None:
    """What the job waits for, if a worker handed a shard back lately and it has not ended."""
    at = as_float(fields.get("waiting_at"))
    if at is None or time.time() - at > WAITING_SHOWN_SECONDS or "finished_at" in fields:
        return None
    return fields.get("waiting")
