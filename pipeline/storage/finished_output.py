"""A finished embed output read back: its manifest and identity, its part files, and each
document's rows and digest (for `--reuse`; `m3pipe search` streams the same parts).

Every part file records, beside its rows, a 16-byte digest of each document it was made from
(schema metadata key `m3pipe.documents`, in row order, one per document however many chunk
rows it has): the document's text and kept fields. A later job whose document has the same
id and digest, under the same model identity and options, copies its rows instead of
encoding it again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import OutputUnreadable, ReuseError
from pipeline.storage.location import Location, open_location
from pipeline.storage.output_dir import MANIFEST, PART_PATTERN
from pipeline.storage.sink import part_name
from schemas.document import Document

log = logging.getLogger(__name__)

DOCUMENT_DIGESTS_KEY = b"m3pipe.documents"
DIGEST_BYTES = 16
# File metadata that may differ between two outputs whose rows are interchangeable (a
# format-1 colbert column is rewritten in format 2 when reused: schemas/vector_layout.py).
NOT_IDENTITY = frozenset({"m3pipe_version", "output_format"})
COPY_BATCH_ROWS = 16  # rows of a previous part decoded at a time by --reuse
READ_BUFFER_BYTES = 8 << 20  # a column chunk is read through a buffer this size, not whole


def document_digest(doc: Document, keep_fields: Sequence[str] = ()) -> bytes:
    """What a document's rows are made from: its text and the kept fields' values."""
    digest = hashlib.blake2b(doc.text.encode("utf-8"), digest_size=DIGEST_BYTES)
    fields = doc.fields or {}
    for name in keep_fields:
        value = fields.get(name)
        digest.update(b"\x00" + name.encode("utf-8") + b"\x00")
        digest.update(b"\x01" if value is None else b"\x02" + value.encode("utf-8"))
    return digest.digest()


def with_document_digests(
    table: pa.Table, docs: Sequence[Document], keep_fields: Sequence[str] = ()
) -> pa.Table:
    """`table` (the rows of `docs`, in order) with each document's digest in its metadata."""
    packed = b"".join(document_digest(doc, keep_fields) for doc in docs)
    metadata = dict(table.schema.metadata or {})
    metadata[DOCUMENT_DIGESTS_KEY] = base64.b64encode(packed)
    return table.replace_schema_metadata(metadata)


def identity(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The model identity and options in a file's or manifest's metadata that decide what
    its rows hold."""
    return {key: value for key, value in (metadata or {}).items() if key not in NOT_IDENTITY}


def identity_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What differs between two identities, in words, or None."""
    changed = [
        f"{key} {new.get(key)!r} (was {old.get(key)!r})"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]
    return "; ".join(changed) or None


def document_starts(row_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """The first row of each document (a run of equal ids: its chunks), then the row count;
    and each document's id."""
    starts = [row for row in range(len(row_ids)) if row == 0 or row_ids[row] != row_ids[row - 1]]
    return np.array([*starts, len(row_ids)], dtype=np.int64), [row_ids[row] for row in starts]


@dataclass(frozen=True)
class PreviousPart:
    """One part file: its rows, where each document's rows start, and their digests."""

    number: int
    table: pa.Table
    starts: np.ndarray  # the first row of each document, then the row count
    ids: list[str]  # each document's id
    digests: bytes  # DIGEST_BYTES per document, in order
    identity: dict[str, Any]

    def document(self, row: int) -> int | None:
        """The ordinal of the document whose rows start at `row`, or None."""
        ordinal = int(np.searchsorted(self.starts, row))
        if ordinal < len(self.starts) - 1 and self.starts[ordinal] == row:
            return ordinal
        return None

    def digest(self, ordinal: int) -> bytes:
        return self.digests[ordinal * DIGEST_BYTES : (ordinal + 1) * DIGEST_BYTES]


def _previous_part(number: int, path: Location, table: pa.Table) -> PreviousPart:
    """The index of part `number` from its rows' ids (`table`, with the file's metadata)."""
    metadata = table.schema.metadata or {}
    try:
        digests = base64.b64decode(metadata[DOCUMENT_DIGESTS_KEY], validate=True)
        model = json.loads(metadata.get(b"m3pipe", b"{}"))
    except KeyError:
        raise ReuseError(f"{path} records no document digests (an older m3pipe?)") from None
    except ValueError as exc:
        raise ReuseError(f"cannot read {path}: {exc}") from exc
    starts, ids = document_starts(table.column("id").to_pylist())
    if len(digests) != len(ids) * DIGEST_BYTES:
        raise ReuseError(f"{path}: its document digests do not match its rows")
    return PreviousPart(number, table, starts, ids, digests, identity(model))


class PartFile:
    """A part file open for `--reuse`: its documents' index, read when it was opened, and
    its rows, read when asked, from the same open file. So the rows copied are those of the
    file whose ids and digests were checked, even if the part is replaced meanwhile (on an
    object store, as far as its reads see one version).

    Rows are decoded a few at a time (COPY_BATCH_ROWS) by a cursor that stays where the last
    read ended: pieces of a shard read a part's rows in order, so each row is decoded once,
    and what is held is a batch and the column chunks' read buffers, not a row group (up to
    1,024 rows, ~1 GB of 512-token documents in parts written whole). Reading a 314 MB row
    group whole took 1.1 s and 810 MB of Arrow memory here; in batches, 0.13 s and 60 MB."""

    def __init__(self, index: PreviousPart, handle: pq.ParquetFile) -> None:
        self.index = index
        self.columns = set(handle.schema_arrow.names)
        self._handle = handle
        metadata = handle.metadata
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        self._group_starts = np.cumsum([0, *sizes])
        self._cursor: Iterator[pa.RecordBatch] | None = None
        self._next_row = 0  # the row that the cursor's next batch (or `_left`) starts at
        self._left: pa.RecordBatch | None = None  # rows read past the last request

    def rows(self, start: int, stop: int, columns: list[str]) -> pa.Table:
        """Rows `start`..`stop - 1` (only `columns`; the same ones at every call)."""
        if not 0 <= start <= stop <= self._group_starts[-1]:
            raise ValueError(f"rows {start}..{stop} are not in part {self.index.number}")
        behind = self._cursor is None or start < self._next_row
        if behind or self._group(start) > self._group(self._next_row):  # or a group ahead
            self._seek(start, columns)
        assert self._cursor is not None
        batches = []
        try:
            while self._next_row < stop:
                if self._left is not None:
                    batch, self._left = self._left, None
                else:
                    batch = next(self._cursor, None)
                    if batch is None:
                        raise ValueError(f"part {self.index.number} ends before row {stop}")
                first = self._next_row
                end = first + batch.num_rows
                if end > start:
                    skip = max(start - first, 0)
                    batches.append(batch.slice(skip, min(stop, end) - first - skip))
                if end > stop:
                    self._left, self._next_row = batch.slice(stop - first), stop
                    break
                self._next_row = end
        except BaseException:
            self.forget_rows()  # where the cursor stands is not known: a later read seeks
            raise
        if not batches:
            return self._handle.schema_arrow.empty_table().select(columns)
        return pa.Table.from_batches(batches)

    def forget_rows(self) -> None:
        """Let go of the cursor and what it holds (a later read starts one again)."""
        self._cursor, self._left = None, None

    def close(self) -> None:
        self.forget_rows()
        self._handle.close()

    def _group(self, row: int) -> int:
        return int(np.searchsorted(self._group_starts, row, side="right")) - 1

    def _seek(self, row: int, columns: list[str]) -> None:
        """A cursor from the start of the row group that holds `row`."""
        group = min(self._group(row), len(self._group_starts) - 2)
        self.forget_rows()
        self._cursor = self._handle.iter_batches(
            batch_size=COPY_BATCH_ROWS,
            row_groups=range(max(group, 0), len(self._group_starts) - 1),
            columns=columns,
            use_threads=False,
        )
        self._next_row = int(self._group_starts[max(group, 0)])


class FinishedOutput:
    """A finished m3pipe embed output directory (local or object store)."""

    def __init__(self, location: Location, manifest: dict[str, Any]) -> None:
        self.location = location
        self.manifest = manifest

    @classmethod
    def at(cls, target: Location | Path | str) -> FinishedOutput:
        """Its part files only, its manifest unread: what a worker copies rows from."""
        return cls(open_location(target), {})

    @classmethod
    def open(cls, target: Location | Path | str) -> FinishedOutput:
        location = open_location(target)
        try:
            manifest = json.loads((location / MANIFEST).read_text())
        except FileNotFoundError:
            raise OutputUnreadable(
                f"{location}: no {MANIFEST} there (not a finished m3pipe output)"
            ) from None
        except (OSError, ValueError) as exc:
            raise OutputUnreadable(f"{location}: cannot read {MANIFEST}: {exc}") from exc
        if not isinstance(manifest, dict) or not isinstance(manifest.get("job"), dict):
            raise OutputUnreadable(f"{location}: {MANIFEST} is not an m3pipe manifest")
        job = manifest["job"]
        if job.get("task", "embed") != "embed" or not isinstance(job.get("options"), dict):
            raise OutputUnreadable(f"{location}: not the output of an embed job")
        linked = next(_linked_parts(location), None)
        if linked is not None:
            raise OutputUnreadable(
                f"{location}: {linked} is a link, not a file m3pipe wrote (links in an "
                "output are never followed)"
            )
        return cls(location, manifest)

    @property
    def identity(self) -> dict[str, Any]:
        return identity(self.manifest.get("model"))

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.manifest["job"]["options"])

    @property
    def keep_fields(self) -> list[str]:
        return list(self.manifest["job"].get("keep_fields") or [])

    @property
    def documents(self) -> int:
        return int((self.manifest.get("counts") or {}).get("documents") or 0)

    @property
    def inputs(self) -> list[str]:
        """The inputs it was made from (URIs)."""
        return [str(uri) for uri in self.manifest["job"].get("inputs") or []]

    def part_numbers(self) -> Iterator[int]:
        """The numbers of its part files, unsorted (a streamed listing)."""
        for name in self.location.child_names(PART_PATTERN):
            number = name.removeprefix("part-").removesuffix(".parquet")
            if number.isdigit() and part_name(int(number)) == name:
                yield int(number)

    def open_part(self, number: int) -> PartFile:
        """Part `number` opened for copying rows: its documents' index read now, its rows
        when asked; ReuseError if it is missing, damaged or made without document digests.
        Close it when done."""
        path = self._part_path(number)
        try:
            handle = pq.ParquetFile(
                path.path, filesystem=path.fs, buffer_size=READ_BUFFER_BYTES, pre_buffer=False
            )
        except (OSError, pa.ArrowException, ValueError) as exc:
            raise ReuseError(f"cannot read {path}: {exc}") from exc
        try:
            return PartFile(_previous_part(number, path, handle.read(columns=["id"])), handle)
        except BaseException as exc:
            handle.close()
            if isinstance(exc, (OSError, pa.ArrowException, ValueError, KeyError)):
                raise ReuseError(f"cannot read {path}: {exc}") from exc
            raise  # a ReuseError of the index itself, or an interruption

    def _part_path(self, number: int) -> Location:
        path = self.location / part_name(number)
        if path.is_local and os.path.islink(path.local_path):  # made one after open()
            raise ReuseError(f"{path} is a link: not followed")
        return path

    def entries(self) -> Iterator[tuple[str, int, int, int, bytes]]:
        """(id, part, first row, rows, digest) of every document, a part at a time. A part
        that cannot be read is skipped with a warning: its documents are encoded again."""
        for number in self.part_numbers():
            try:
                opened = self.open_part(number)
            except ReuseError as exc:
                log.warning("--reuse: %s; its documents will be encoded", exc)
                continue
            opened.close()  # the index is what is wanted here
            part = opened.index
            starts = part.starts.tolist()
            for ordinal, doc_id in enumerate(part.ids):
                start, end = starts[ordinal], starts[ordinal + 1]
                yield doc_id, number, start, end - start, part.digest(ordinal)


def _linked_parts(location: Location) -> Iterator[str]:
    """The part names in a local output that are symbolic links, read as it goes."""
    if not location.is_local:
        return
    with os.scandir(location.local_path) as entries:
        for entry in entries:
            if entry.is_symlink() and fnmatchcase(entry.name, PART_PATTERN):
                yield entry.name


def open_for_reuse(target: Location | Path | str) -> FinishedOutput:
    """FinishedOutput.open, its refusal worded for `--reuse`."""
    try:
        return FinishedOutput.open(target)
    except OutputUnreadable as exc:
        raise ReuseError(f"--reuse {exc}") from None
