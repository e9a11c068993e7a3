"""Ending a queue job: once every shard has ended, check the files and write the manifest."""

from __future__ import annotations

import logging
import time
from typing import Any

from pipeline.errors import OutputDirError
from pipeline.jobs.letters import remove_finished_letters
from pipeline.jobs.shard_report import ShardReport
from pipeline.jobs.store import JobStore
from pipeline.storage.location import Location, open_location
from pipeline.storage.manifest import MANIFEST_FAILURES, build_manifest
from pipeline.storage.output_dir import (
    MANIFEST,
    PART_PATTERN,
    ShardLog,
    check_job_owns,
    release_job_lease,
    remove_plan,
    write_json_atomic,
)
from pipeline.storage.sink import part_name, remove_stale_temp_files
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
    total = status.shards.total or 0
    present = part_bitmap(out, total)  # one listing, not a stat per file
    failures: list[dict[str, Any]] = []  # the first few, for the manifest
    failed = parts = 0
    shard_log = _BestEffortShardLog(out)
    # In shard order, a batch at a time: constant memory, Redis never blocked for long.
    for shard, state, info in store.shard_records(job_id, total):
        if state is ShardState.DONE and not present[shard]:
            # Someone removed a finished file: count it as failed rather than lie.
            store.mark_shard(job_id, shard, ShardState.FAILED, [ShardState.DONE.value])
            state = ShardState.FAILED
            info = {**info, "error": "output file missing after the shard finished"}
        if state is ShardState.DONE:
            parts += 1
            report = ShardReport.from_counts(info)
            shard_log.add(report.log_entry(shard, part_name(shard), accepted))
        elif state is ShardState.FAILED:
            failed += 1
            if len(failures) < MANIFEST_FAILURES:
                failures.append({"shard": shard, **info})
            shard_log.add({"shard": shard, "state": state.value, **info})
    status = store.status(job_id)
    counts = {
        read: status.input_records or 0,
        accepted: status.documents,
        "rows": status.rows_done,
        "rejected": status.rejected or 0,
        "tokens": status.tokens_done,
        "failed_shards": failed,
    }
    if status.documents_reused is not None:
        counts |= {
            "reused": status.documents_reused,
            "encoded": status.documents_done - status.documents_reused,
            "dropped": status.documents_dropped or 0,
        }
    model = store.model_metadata(job_id)
    if spec.precision == "any" and model is not None:
        # Workers of several precisions may have run it: say which, and that it is a mix.
        dtypes = store.compute_dtypes(job_id)
        model = {**model, "compute_dtypes": dtypes}
        model["compute_dtype"] = dtypes[0] if len(dtypes) == 1 else "mixed"
    manifest = build_manifest(
        job={"command": spec.command, "job_id": job_id, **spec.model_dump(mode="json")},
        model=model,
        parts=parts,
        counts=counts,
        stats={
            "shards": status.shards.total,
            "wall_seconds": round(_wall(status), 3),
            "tokens_per_second": status.tokens_per_second,
        },
        failures=failures,
    )
    try:
        check_job_owns(out, job_id)  # another run took the directory: no manifest of ours
        shard_log.close()
        # Temp files of writes cut short by a crash are hidden, but no longer needed; so
        # are the dead letters of shards that were retried and finished.
        remove_stale_temp_files(out)
        remove_finished_letters(store, job_id, out)
        remove_plan(out)  # `m3pipe repair` is for jobs still running
        write_json_atomic(out / MANIFEST, manifest)
        release_job_lease(out, job_id)
    except (OSError, OutputDirError) as exc:
        # The job still ends: an output directory gone or read-only must not leave it
        # running for ever. Its shards have already failed for the same reason.
        log.error("job %s: cannot write %s: %s", job_id, MANIFEST, exc)
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        store.note_error(job_id, f"cannot write {out / MANIFEST}: {problem}")
    final = store.finish_if_complete(job_id)
    log.info("job %s ended: %s", job_id, final)
    return final


def part_bitmap(out: Location, shards: int) -> bytearray:
    """present[shard] is 1 where `out` holds that shard's part file: a byte per shard (1 MB
    for a million shards), where a set of names would cost ~100 bytes each."""
    present = bytearray(shards)
    for name in out.child_names(PART_PATTERN):
        number = name.removeprefix("part-").removesuffix(".parquet")
        if number.isdigit() and int(number) < shards and part_name(int(number)) == name:
            present[int(number)] = 1
    return present


class _BestEffortShardLog:
    """The shard log, or nothing once writing it failed: the loop that writes it also finds
    missing files, and must go on. The failure is raised again by close()."""

    def __init__(self, out: Location) -> None:
        self._error: OSError | OutputDirError | None = None
        self._log: ShardLog | None = None
        try:
            self._log = ShardLog(out)
        except OSError as exc:
            self._error = exc

    def add(self, entry: dict[str, Any]) -> None:
        if self._log is None:
            return
        try:
            self._log.add(entry)
        except OutputDirError as exc:
            self._log.discard()
            self._log, self._error = None, exc

    def close(self) -> None:
        if self._error is not None:
            raise self._error
        if self._log is not None:
            self._log.close()


def _wall(status: JobStatus) -> float:
    return (status.finished_at or time.time()) - status.created_at
