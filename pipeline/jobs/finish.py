"""Ending a queue job: once every shard has ended, check the files and write the manifest."""

from __future__ import annotations

import logging
import time
from typing import Any

from pipeline.jobs.store import JobStore
from pipeline.storage.location import open_location
from pipeline.storage.manifest import build_manifest
from pipeline.storage.output_dir import MANIFEST, PART_PATTERN, write_json_atomic
from pipeline.storage.sink import remove_stale_temp_files
from schemas.job import JobState, JobStatus, ShardState

log = logging.getLogger(__name__)


def all_shards_ended(status: JobStatus) -> bool:
    shards = status.shards
    return (
        status.submitted
        and shards.total is not None
        and shards.done + shards.failed + shards.cancelled >= shards.total
    )


def finalize_if_complete(store: JobStore, job_id: str) -> JobState | None:
    """The job's final state if it has ended, writing `_manifest.json` first; else None.

    Safe to call from any process, any number of times: the manifest is written
    atomically from Redis state and the final state is set once.
    """
    status = store.status(job_id)
    if status.state.finished:
        return status.state
    if not all_shards_ended(status):
        return None
    spec = store.spec(job_id)
    out = open_location(spec.out)
    read, accepted = spec.task.count_names  # records and documents, or pairs
    files: list[tuple[int, dict[str, Any]]] = []  # (shard, entry): listed in shard order
    failures: list[dict[str, Any]] = []
    present = {part.name for part in out.children(PART_PATTERN)}  # one listing, not a stat each
    # Shard by shard in batches: a job of a million shards never blocks Redis for long.
    for shard, state, info in store.shard_records(job_id):
        if state is ShardState.DONE:
            if info["name"] not in present:
                # Someone removed a finished file: count it as failed rather than lie.
                store.mark_shard(job_id, shard, ShardState.FAILED, [ShardState.DONE.value])
                info = {**info, "error": "output file missing after the shard finished"}
                failures.append({"shard": shard, **info})
                continue
            entry = {"name": info["name"], accepted: info["documents"]}
            files.append((shard, {**entry, **{k: info[k] for k in ("rows", "tokens", "bytes")}}))
        elif state is ShardState.FAILED:
            failures.append({"shard": shard, **info})
    files.sort(key=lambda item: item[0])  # by number: part-100000 comes after part-99999
    failures.sort(key=lambda entry: entry["shard"])
    status = store.status(job_id)
    manifest = build_manifest(
        job={"command": spec.command, "job_id": job_id, **spec.model_dump(mode="json")},
        model=store.model_metadata(job_id),
        files=[entry for _, entry in files],
        counts={
            read: status.input_records or 0,
            accepted: status.documents,
            "rows": status.rows_done,
            "rejected": status.rejected or 0,
            "tokens": status.tokens_done,
            "failed_shards": len(failures),
        },
        stats={
            "shards": status.shards.total,
            "wall_seconds": round(_wall(status), 3),
            "tokens_per_second": status.tokens_per_second,
        },
        failures=failures,
    )
    try:
        # Temp files of writes cut short by a crash are hidden, but no longer needed.
        remove_stale_temp_files(out)
        write_json_atomic(out / MANIFEST, manifest)
    except OSError as exc:
        # The job still ends: an output directory gone or read-only must not leave it
        # running for ever. Its shards have already failed for the same reason.
        log.error("job %s: cannot write %s: %s", job_id, MANIFEST, exc)
        store.note_error(job_id, f"cannot write {out / MANIFEST}: {exc.strerror or exc}")
    final = store.finish_if_complete(job_id)
    log.info("job %s ended: %s", job_id, final)
    return final


def _wall(status: JobStatus) -> float:
    return (status.finished_at or time.time()) - status.created_at
