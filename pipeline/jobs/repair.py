"""`m3pipe repair JOB`: bring a job's state in Redis back in line with the truth after Redis
lost writes (a failover that dropped the last writes, an eviction), and send again exactly
the shards that need it.

The output directory is the durable truth: a part file whose footer names this job, this
shard and its documents' digest is a finished shard, whatever Redis says (it is marked done
from the footer's counts). Every other shard that has not ended (queued, running, or with no
state at all) is sent again from the job's shard plan (pipeline/jobs/plan.py), registered
first if its registration was lost. Sending a shard that still has a message somewhere is
safe: the state machine runs it once and skips the other delivery (or, if a worker is on it
now, the later delivery takes it over and the earlier one's commit is refused). Shards that
ended (done, failed, cancelled) are left alone: failed ones are `m3pipe retry`'s.

Only the re-sent shards' inputs are read again (their byte ranges): the report says how
many bytes that is, against the inputs' size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.errors import PipelineError
from pipeline.jobs.finish import finalize_if_complete, part_bitmap
from pipeline.jobs.plan import PlanReader
from pipeline.jobs.resume import message_digest, read_shard_file
from pipeline.jobs.shard_report import ShardReport
from pipeline.jobs.shard_states import ABSENT
from pipeline.jobs.store import JobStore
from pipeline.storage.location import Location, open_location
from pipeline.storage.sink import part_name
from schemas.job import JobState, ShardMessage, ShardState
from schemas.tenant import Priority

Publish = Callable[[ShardMessage, str, Priority], None]

_UNENDED = [ABSENT, ShardState.QUEUED.value, ShardState.RUNNING.value]


@dataclass
class RepairReport:
    reconciled: int = 0  # shards found finished in the output, marked done
    resent: int = 0  # shards sent again from the plan
    unplanned: list[int] = field(default_factory=list)  # not ended, and not in the plan
    bytes_to_read: int = 0  # of the inputs, by the re-sent shards
    final: JobState | None = None


def repair_job(store: JobStore, job_id: str, publish: Publish) -> RepairReport:
    spec = store.spec(job_id)
    status = store.status(job_id)
    report = RepairReport()
    if status.state.finished:
        report.final = status.state
        return report
    if not status.submitted or status.shards.total is None:
        raise PipelineError(
            f"job {job_id} is still being submitted (or its producer died): repair needs "
            "every shard sent; if the producer is gone, `m3pipe cancel` it and `submit "
            "--resume` (the same inputs and --out)"
        )
    total = status.shards.total
    out = open_location(spec.out)
    present = part_bitmap(out, total)
    plan = PlanReader(out)
    for shard, state, _ in store.shard_records(job_id, total):
        if state in (ShardState.DONE, ShardState.FAILED, ShardState.CANCELLED):
            continue
        registered = store.shard_digest(job_id, shard)
        if present[shard] and finished_in_output(store, job_id, shard, registered, out):
            report.reconciled += 1
            continue
        message = plan.message(shard)
        if message is None or message.job_id != job_id or message.ref is None:
            report.unplanned.append(shard)
            continue
        if registered is not None and registered != message.ref.digest:
            report.unplanned.append(shard)  # the plan of another submission of the job
            continue
        if state is None:  # its registration was lost too: registered again, as submit did
            store.queue_shard(
                job_id, shard, message.ref.digest, message.size, message_digest(message)
            )
        publish(message, spec.queue, spec.priority)
        report.resent += 1
        report.bytes_to_read += sum(s.end - s.start for s in message.ref.segments)
    report.final = finalize_if_complete(store, job_id)
    return report


def finished_in_output(
    store: JobStore, job_id: str, shard: int, registered: str | None, out: Location
) -> bool:
    """Mark the shard done from its part file's footer if the file is this shard's (the
    output is the durable truth); False if there is no such file."""
    path = out / part_name(shard)
    found = read_shard_file(path)
    if found is None:
        return False
    facts = found.facts
    if facts.get("job_id") != job_id or facts.get("shard") != shard:
        return False
    if registered is not None and facts.get("digest") != registered:
        return False
    try:
        shard_report = ShardReport(
            documents=int(facts["documents"]),
            rows=int(facts["rows"]),
            tokens=int(facts["tokens"]),
            part_bytes=path.size(),
        )
    except (KeyError, TypeError, ValueError):
        return False
    changed, _ = store.mark_done(job_id, shard, _UNENDED, shard_report)
    return changed
