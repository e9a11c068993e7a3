"""The output directory layout: part-*.parquet, _manifest.json, _rejects.jsonl, _job.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import IO

from pipeline.errors import PermanentError
from pipeline.sink import remove_stale_temp_files
from schemas.document import Reject

MANIFEST = "_manifest.json"
REJECTS = "_rejects.jsonl"
JOB_FILE = "_job.json"  # the spec of the queue job writing here, for `--resume`


class OutputDirError(PermanentError):
    """The output directory cannot be used as asked."""


def prepare_output_dir(path: Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create `path`; refuse one holding earlier output unless `overwrite`, which clears it.

    `resume` keeps the part files of an earlier submission (pipeline/resume.py decides
    which still count) and drops only its manifest, so no stale manifest stays visible.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output path exists and is not a directory: {path}")
    path.mkdir(parents=True, exist_ok=True)
    if resume:
        (path / MANIFEST).unlink(missing_ok=True)
        remove_stale_temp_files(path)
        return path
    earlier = sorted(path.glob("part-*.parquet")) + [
        p for p in (path / MANIFEST, path / REJECTS, path / JOB_FILE) if p.exists()
    ]
    if earlier and not overwrite:
        raise OutputDirError(
            f"output directory {path} already holds output ({earlier[0].name}, ...): "
            "choose another --out, pass --overwrite, or --resume an unfinished job"
        )
    for stale in earlier:
        stale.unlink()
    remove_stale_temp_files(path)
    return path


def write_json_atomic(path: Path, payload: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class RejectLog:
    """Appends rejects as JSON lines; the file appears under its name only when closed."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / REJECTS
        self._tmp = self.path.with_name(f".{REJECTS}.tmp-{os.getpid()}")
        self._handle: IO[str] = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115
        self.count = 0

    def add(self, reject: Reject) -> None:
        self._handle.write(reject.model_dump_json(exclude_none=True) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._handle.closed:
            return
        self._handle.close()
        os.replace(self._tmp, self.path)

    def __enter__(self) -> RejectLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
