"""Which reader reads an input: by --format, or by the file name and kind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from pyarrow.fs import FileType

from pipeline.errors import InputError, UnreadableInput
from pipeline.inputs.readers.compressed import base_suffix
from pipeline.inputs.readers.csv import read_csv
from pipeline.inputs.readers.jsonl import read_jsonl
from pipeline.inputs.readers.lines import DEFAULT_MAX_RECORD_BYTES
from pipeline.inputs.readers.parquet import read_parquet
from pipeline.inputs.readers.txt import read_text_dir
from pipeline.inputs.validate import InputItem, RecordShape
from pipeline.storage.location import Location, open_location
from schemas.document import Reject

FORMATS = ("auto", "jsonl", "csv", "parquet", "txt")
_BY_SUFFIX = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class Reader(Protocol):
    """What each format's reader is: one input's records as validated items (a Document, a
    PairRecord or a Reject each, in input order), read in bounded memory: a record over
    `max_record_bytes` is rejected while it is read. `shape` says which fields make a
    record (documents by default: `id_field`, `text_field`, `keep_fields`)."""

    def __call__(
        self,
        path: Location | Path | str,
        *,
        id_field: str = ...,
        text_field: str = ...,
        keep_fields: tuple[str, ...] = ...,
        shape: RecordShape | None = ...,
        max_record_bytes: int = ...,
    ) -> Iterator[InputItem]: ...


_READERS: dict[str, Reader] = {
    "jsonl": read_jsonl,
    "csv": read_csv,
    "parquet": read_parquet,
    "txt": read_text_dir,
}


def detect_format(path: Location | Path | str, requested: str = "auto") -> str:
    if requested not in FORMATS:
        raise InputError(f"unknown input format {requested!r}; choose from {', '.join(FORMATS)}")
    if requested != "auto":
        return requested
    location = open_location(path)
    file_type = location.probe()
    if file_type == FileType.Directory:
        named = _BY_SUFFIX.get(base_suffix(location.name))
        if named is not None:
            raise InputError(
                f"{location} is a directory, but its name says {named}; pass --format txt "
                "to read the .txt files in it"
            )
        return "txt"
    if file_type == FileType.NotFound:
        raise InputError(f"input not found: {location}")
    fmt = _BY_SUFFIX.get(base_suffix(location.name))
    if fmt is None:
        raise InputError(
            f"cannot tell the format of {location} from its name; pass --format "
            "jsonl|csv|parquet|txt (compressed .gz/.zst allowed for jsonl and csv)"
        )
    return fmt


def read_records(
    path: Location | Path | str,
    fmt: str = "auto",
    *,
    id_field: str = "id",
    text_field: str = "text",
    keep_fields: tuple[str, ...] = (),
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[InputItem]:
    """Stream one input's records, each validated into a Document or a Reject.

    A file that cannot be opened, or the unreadable rest of a damaged one, becomes one
    Reject (one input record) so the job goes on with the other records and files. A
    record over `max_record_bytes` is rejected while it is read, never held whole.
    """
    location = open_location(path)
    reader = _READERS[detect_format(location, fmt)]
    items = reader(
        location,
        id_field=id_field,
        text_field=text_field,
        keep_fields=keep_fields,
        max_record_bytes=max_record_bytes,
    )
    return _unreadable_as_reject(items, location.uri)


def detect_pair_format(path: Location | Path | str, requested: str = "auto") -> str:
    """detect_format for rerank input, which has no .txt form (a text holds no pair)."""
    fmt = detect_format(path, requested)
    if fmt == "txt":
        raise InputError(f"{path}: rerank input is JSONL, CSV or Parquet, not .txt files")
    return fmt


def read_pair_records(
    path: Location | Path | str,
    fmt: str = "auto",
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[InputItem]:
    """Stream rerank input: each item is a PairRecord (pipeline/inputs/pairs.py) or a Reject."""
    from pipeline.inputs.pairs import PairShape

    location = open_location(path)
    fmt = detect_pair_format(location, fmt)
    items = _READERS[fmt](location, shape=PairShape(), max_record_bytes=max_record_bytes)
    return _unreadable_as_reject(items, location.uri)


def _unreadable_as_reject(items: Iterator[InputItem], source: str) -> Iterator[InputItem]:
    try:
        yield from items
    except UnreadableInput as exc:
        yield InputItem(unreadable_reject(exc, source), line=exc.line, row=exc.row)


def unreadable_reject(exc: UnreadableInput, source: str) -> Reject:
    """The one reject for an input, or the rest of one, that cannot be read."""
    return Reject(source=source, line=exc.line, row=exc.row, reason=str(exc))
