"""The output directory layout: part-*.parquet, _manifest.json, _shards.jsonl,
_rejects.jsonl, _job.json, _owner.json (who writes here: pipeline/storage/output_lease.py),
and _letters/ (the messages of failed shards, while they may be retried).

The directory is a Location: a local directory or an object-store prefix (s3://...).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, cast

import pyarrow.fs as pafs

from pipeline.errors import OutputDirError
from pipeline.storage.local_commit import local_temp_name
from pipeline.storage.location import Location, open_location
from pipeline.storage.output_lease import LEASE, describe_holder, read_lease
from pipeline.storage.sink import remove_stale_temp_files
from schemas.document import Reject

MANIFEST = "_manifest.json"
SHARDS = "_shards.jsonl"  # one line per shard: its part file and counts, or its failure
REJECTS = "_rejects.jsonl"
JOB_FILE = "_job.json"  # the spec of the queue job writing here, for `--resume`
PART_PATTERN = "part-*.parquet"
LETTERS_DIR = "_letters"  # failed shards' messages too large for Redis (pipeline/jobs/letters.py)
PLAN_DIR = "_plan"  # the messages a queue job sent, for `m3pipe repair` (pipeline/jobs/plan.py)
_FOREIGN_SHOWN = 3  # foreign files named in the refusal


def prepare_output_dir(
    target: Location | Path | str,
    overwrite: bool = False,
    resume: bool = False,
    resumable: bool = True,
) -> Location:
    """Create the directory; refuse one holding earlier output unless `overwrite`, which
    clears it.

    `resume` keeps the part files of an earlier submission (pipeline/jobs/resume.py decides
    which still count) and drops only its manifest, so no stale manifest stays visible.
    `resumable` says whether the command offers --resume (the queue commands do).
    """
    out = check_output_dir(target, overwrite, resume, resumable)
    if resume:
        (out / MANIFEST).delete()
        (out / SHARDS).delete()
        _remove_letters(out)  # the resumed job re-sends every shard without a good file
        remove_plan(out)  # and writes its own plan
        remove_stale_temp_files(out)
        return out
    for stale in _earlier_output(out):
        stale.delete()
    remove_stale_temp_files(out)
    return out


def check_output_dir(
    target: Location | Path | str,
    overwrite: bool = False,
    resume: bool = False,
    resumable: bool = True,
) -> Location:
    """What prepare_output_dir refuses, refused without changing anything but creating the
    directory: a command checks it before heavy work (loading a model)."""
    out = open_location(target)
    if out.probe() == pafs.FileType.File:
        raise OutputDirError(f"output path exists and is not a directory: {out}")
    if not out.is_local:
        _check_bucket(out)
    _make_dir(out)
    _refuse_foreign_files(out)
    if resume or overwrite:
        return out
    first = next(_earlier_output(out), None)
    if first is not None:
        resume_hint = ", or --resume an unfinished job" if resumable else ""
        raise OutputDirError(
            f"output directory {out} already holds output ({first.name}, ...): "
            f"choose another --out or pass --overwrite{resume_hint}"
        )
    return out


def _earlier_output(out: Location) -> Iterator[Location]:
    """What an earlier run left, streamed, not listed whole: it may be a million parts."""
    return itertools.chain(
        (
            loc
            for loc in (out / MANIFEST, out / SHARDS, out / REJECTS, out / JOB_FILE)
            if loc.exists()
        ),
        (out / name for name in out.child_names(PART_PATTERN)),
        _letters(out),
        plan_files(out),
    )


def check_job_owns(out: Location, job_id: str) -> None:
    """OutputDirError unless `out` is owned by queue job `job_id`: its lease names the job
    (or, in a directory of a job submitted before leases, its _job.json does). Workers call
    it before a part becomes visible, finalisation before the manifest is written."""
    lease = read_lease(out)
    if lease is None:
        try:
            owner = json.loads((out / JOB_FILE).read_bytes()).get("job_id")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner == job_id:
            return
        raise OutputDirError(f"output directory {out} is no longer job {job_id}'s: not written")
    if lease.get("job_id") != job_id:
        raise OutputDirError(
            f"output directory {out} was taken over by {describe_holder(lease)}: "
            f"job {job_id} writes nothing more there"
        )


def release_job_lease(out: Location, job_id: str) -> None:
    """The job has ended: its lease goes (if it is still the job's), so a finished output
    holds no `_owner.json` and the directory is free at once."""
    lease = read_lease(out)
    if lease is not None and lease.get("job_id") == job_id:
        (out / LEASE).delete()


def _letters(out: Location) -> Iterator[Location]:
    letters = out / LETTERS_DIR
    return (letters / name for name in letters.child_names("shard-*.json"))


def _remove_letters(out: Location) -> None:
    for letter in _letters(out):
        letter.delete()


def plan_files(out: Location) -> Iterator[Location]:
    plan = out / PLAN_DIR
    return (plan / name for name in plan.child_names("plan-*.jsonl"))


def remove_plan(out: Location) -> None:
    """The job's shard plan, once it has ended (or before a new one is written)."""
    for chunk in plan_files(out):
        chunk.delete()


def _make_dir(out: Location) -> None:
    try:
        out.make_dir()
    except (FileExistsError, NotADirectoryError) as exc:
        blocking = next(
            (p for p in out.local_path.parents if p.exists() and not p.is_dir()), out.local_path
        )
        raise OutputDirError(f"cannot create {out}: {blocking} is not a directory") from exc
    except OSError as exc:
        raise OutputDirError(f"cannot create {out}: {exc.strerror or exc}") from exc


def is_own_file(name: str) -> bool:
    """Whether m3pipe writes files of this name in an output directory."""
    return (
        fnmatchcase(name, PART_PATTERN)
        or name in (MANIFEST, SHARDS, REJECTS, JOB_FILE, LEASE)
        or (name.startswith(".") and ".tmp-" in name)  # an interrupted local write
    )


def _refuse_foreign_files(out: Location) -> None:
    """m3pipe writes into an empty directory or its own output, never among other files:
    --overwrite deletes only its own files, and a user's files must not mix with parts."""
    # Streamed, and stopped at the few it names: an earlier output may be a million parts.
    names = (
        _local_foreign(out.local_path)
        if out.is_local
        else (name for name in out.child_names() if not is_own_file(name))
    )
    foreign = sorted(itertools.islice(names, _FOREIGN_SHOWN + 1))
    if foreign:
        shown = ", ".join(foreign[:_FOREIGN_SHOWN])
        shown += ", ..." if len(foreign) > _FOREIGN_SHOWN else ""
        raise OutputDirError(
            f"output directory {out} holds files m3pipe did not write ({shown}): "
            "choose an empty or new --out"
        )


def _local_foreign(directory: Path) -> Iterator[str]:
    """What in `directory` m3pipe did not write, read as it goes: directories but the
    letters' and the plan's (as `name/`), and anything not a regular file of ours (a
    symlink too)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in (LETTERS_DIR, PLAN_DIR):
                    yield entry.name + "/"
            elif not (entry.is_file(follow_symlinks=False) and is_own_file(entry.name)):
                yield entry.name


def _check_bucket(out: Location) -> None:
    """An object store's bucket (or container) must exist: m3pipe never creates one."""
    bucket = out.path.split("/", 1)[0]
    if out.fs.get_file_info(bucket).type != pafs.FileType.Directory:
        raise OutputDirError(f"bucket {bucket!r} of {out} does not exist or is not readable")


def write_json_atomic(target: Location, payload: object) -> None:
    data = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    target.write_bytes(data.encode("utf-8"))


class JsonLinesLog:
    """Collects JSON lines; the file appears under its name only when closed.

    Lines go to a local temp file (next to the output when it is local), so millions of
    lines cost disk, not memory; an object store gets the file streamed from it when closed
    (`Location.upload`: what the store may have committed of a copy cut short is deleted). A write
    that fails (a full disk) is an OutputDirError, and a log left by an error is discarded,
    never published: a partial `_rejects.jsonl` would hide rejects.
    """

    def __init__(self, directory: Location | Path | str, name: str) -> None:
        self.location = open_location(directory) / name
        self._tmp: Path | None = None
        if self.location.is_local:
            self._tmp = local_temp_name(self.location.local_path)
            self._handle: IO[str] = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115
        else:
            self._handle = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        self.count = 0

    def add_line(self, line: str) -> None:
        try:
            self._handle.write(line + "\n")
        except OSError as exc:
            raise self._failed(exc) from exc
        self.count += 1

    def close(self) -> None:
        if self._handle.closed:
            return
        try:
            if self._tmp is not None:
                self._handle.close()  # flushes: a full disk shows here at the latest
                with open(self._tmp, "rb") as written:
                    os.fsync(written.fileno())
                os.replace(self._tmp, self.location.local_path)
                return
            with self._handle:
                self._handle.flush()
                lines = cast(IO[bytes], cast(io.TextIOWrapper, self._handle).buffer)
                lines.seek(0)
                self.location.upload(lines)
        except OSError as exc:
            self.discard()
            raise self._failed(exc) from exc

    def discard(self) -> None:
        """Drop what was written; nothing is published."""
        with contextlib.suppress(OSError):
            self._handle.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def _failed(self, exc: OSError) -> OutputDirError:
        return OutputDirError(f"cannot write {self.location}: {exc.strerror or exc}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


class RejectLog(JsonLinesLog):
    """`_rejects.jsonl`: one line per rejected record, with its source, position and reason."""

    def __init__(self, directory: Location | Path | str) -> None:
        super().__init__(directory, REJECTS)

    def add(self, reject: Reject) -> None:
        self.add_line(reject.model_dump_json(exclude_none=True))


class ShardLog(JsonLinesLog):
    """`_shards.jsonl`: one line per shard in shard order, what the manifest sums up."""

    def __init__(self, directory: Location | Path | str) -> None:
        super().__init__(directory, SHARDS)

    def add(self, entry: dict[str, Any]) -> None:
        self.add_line(json.dumps(entry, sort_keys=True))


def read_shard_log(directory: Location | Path | str) -> Iterator[dict[str, Any]]:
    """The entries of a finished output's `_shards.jsonl`, one at a time."""
    with (open_location(directory) / SHARDS).open_input() as handle:
        for line in handle:
            yield json.loads(line)


def part_entries(directory: Location | Path | str) -> list[dict[str, Any]]:
    """The shards that made a part file, in shard order (for tests and small outputs)."""
    return [entry for entry in read_shard_log(directory) if entry["state"] == "done"]
