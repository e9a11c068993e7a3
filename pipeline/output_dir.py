"""The output directory layout: part-*.parquet, _manifest.json, _rejects.jsonl, _job.json.

The directory is a Location: a local directory or an object-store prefix (s3://...).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO

import pyarrow.fs as pafs

from pipeline.errors import PermanentError
from pipeline.sink import remove_stale_temp_files
from pipeline.storage import Location, local_temp_name, open_location
from schemas.document import Reject

MANIFEST = "_manifest.json"
REJECTS = "_rejects.jsonl"
JOB_FILE = "_job.json"  # the spec of the queue job writing here, for `--resume`
PART_PATTERN = "part-*.parquet"


class OutputDirError(PermanentError):
    """The output directory cannot be used as asked."""


def prepare_output_dir(
    target: Location | Path | str, overwrite: bool = False, resume: bool = False
) -> Location:
    """Create the directory; refuse one holding earlier output unless `overwrite`, which
    clears it.

    `resume` keeps the part files of an earlier submission (pipeline/resume.py decides
    which still count) and drops only its manifest, so no stale manifest stays visible.
    """
    out = open_location(target)
    if out.probe() == pafs.FileType.File:
        raise OutputDirError(f"output path exists and is not a directory: {out}")
    if not out.is_local:
        _check_bucket(out)
    out.make_dir()
    if resume:
        (out / MANIFEST).delete()
        remove_stale_temp_files(out)
        return out
    earlier = out.children(PART_PATTERN) + [
        loc for loc in (out / MANIFEST, out / REJECTS, out / JOB_FILE) if loc.exists()
    ]
    if earlier and not overwrite:
        raise OutputDirError(
            f"output directory {out} already holds output ({earlier[0].name}, ...): "
            "choose another --out, pass --overwrite, or --resume an unfinished job"
        )
    for stale in earlier:
        stale.delete()
    remove_stale_temp_files(out)
    return out


def _check_bucket(out: Location) -> None:
    """An object store's bucket (or container) must exist: m3pipe never creates one."""
    bucket = out.path.split("/", 1)[0]
    if out.fs.get_file_info(bucket).type != pafs.FileType.Directory:
        raise OutputDirError(f"bucket {bucket!r} of {out} does not exist or is not readable")


def write_json_atomic(target: Location, payload: object) -> None:
    data = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    target.write_bytes(data.encode("utf-8"))


class RejectLog:
    """Collects rejects as JSON lines; the file appears under its name only when closed.

    Lines go to a local temp file (next to the output when it is local), so millions of
    rejects cost disk, not memory; an object store gets the whole file in one put.
    """

    def __init__(self, directory: Location | Path | str) -> None:
        self.location = open_location(directory) / REJECTS
        self._tmp: Path | None = None
        if self.location.is_local:
            self._tmp = local_temp_name(self.location.local_path)
            self._handle: IO[str] = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115
        else:
            self._handle = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        self.count = 0

    def add(self, reject: Reject) -> None:
        self._handle.write(reject.model_dump_json(exclude_none=True) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._handle.closed:
            return
        if self._tmp is not None:
            self._handle.close()
            os.replace(self._tmp, self.location.local_path)
            return
        with self._handle:
            self._handle.seek(0)
            self.location.write_bytes(self._handle.read().encode("utf-8"))

    def __enter__(self) -> RejectLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
