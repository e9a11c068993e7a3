"""`--resume`: the job taken up under its earlier id, shards whose part is whole and made from
the same documents counted done, parts no shard of this submission makes removed."""

from __future__ import annotations

import logging

from pipeline.errors import ResumeError
from pipeline.jobs.resume import check_same_job, previous_spec, read_shard_file
from pipeline.jobs.shard_report import ShardReport
from pipeline.jobs.store import ABSENT, JobStore
from pipeline.storage.location import Location
from pipeline.storage.output_dir import PART_PATTERN
from pipeline.storage.sink import part_name
from schemas.job import JobSpec

log = logging.getLogger(__name__)


def spec_to_resume(spec: JobSpec, out: Location, store: JobStore) -> JobSpec:
    """The spec under the earlier job's id, once it is sure to be the same job, not running.

    The earlier job's Redis state (if Redis still has it) is dropped: shard states are
    rebuilt from the files, so a resume works after Redis lost everything too.
    """
    previous = previous_spec(out)
    spec = spec.model_copy(update={"job_id": previous.job_id})
    check_same_job(previous, spec)
    if store.exists(spec.job_id):
        state = store.state(spec.job_id)
        if not state.finished:
            raise ResumeError(
                f"job {spec.job_id} is still {state.value}: wait for it, or "
                f"`m3pipe cancel {spec.job_id}` first, then resume"
            )
        store.forget(spec.job_id)
    return spec


def already_done(
    store: JobStore,
    out: Location,
    job_id: str,
    index: int,
    documents: int,
    digest: str,
) -> bool:
    """Whether shard `index` (of `documents` items) has a whole file made from these
    documents (then it is done).

    A file made from other documents is removed, so a stale file never stays visible.
    """
    path = out / part_name(index)
    found = read_shard_file(path)
    if found is None or found.facts.get("digest") != digest:
        path.delete()
        return False
    facts = found.facts
    report = ShardReport(  # the job's `documents_resumed` counts it as found
        documents=documents,
        rows=int(facts["rows"]),
        tokens=int(facts["tokens"]),
        part_bytes=path.size(),
    )
    store.mark_done(job_id, index, [ABSENT], report)
    store.note_documents(job_id, documents)
    store.note_resumed(job_id, documents, int(facts["tokens"]))
    store.set_model_metadata(job_id, found.model)
    return True


def remove_parts_from(out: Location, first: int) -> None:
    """Part files numbered `first` and above belong to no shard of this submission."""
    for name in out.child_names(PART_PATTERN):  # streamed: deleting as it lists is fine
        number = name.removeprefix("part-").removesuffix(".parquet")
        if number.isdigit() and int(number) >= first:
            log.info("resume: removing %s, which no shard of this submission makes", out / name)
            (out / name).delete()
