"""Streaming JSONL reader (plain or .gz): one record per line, read as bytes, never whole."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from pipeline.errors import InputError
from producers.validate import record_to_document
from schemas.document import Document, Reject


@dataclass
class JsonlItem:
    result: Document | Reject
    line: int


def _open(path: Path) -> IO[bytes]:
    if not path.exists():
        raise InputError(f"input file not found: {path}")
    if path.is_dir():
        raise InputError(f"input is a directory, expected a JSONL file: {path}")
    try:
        if path.suffix == ".gz":
            return cast(IO[bytes], gzip.open(path, "rb"))
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def count_lines(path: Path) -> int:
    """Fast line count of a plain file, for progress totals (0 for compressed input)."""
    if path.suffix == ".gz":
        return 0
    count = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
    return count


def read_jsonl(
    path: Path, *, id_field: str = "id", text_field: str = "text"
) -> Iterator[JsonlItem]:
    """Yield a Document or a Reject per non-blank line; blank lines are not records."""
    source = str(path)
    with _open(Path(path)) as handle:
        try:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                yield JsonlItem(_parse_line(raw, source, number, id_field, text_field), number)
        except (OSError, EOFError) as exc:  # e.g. a truncated .gz
            raise InputError(f"{source}: read failed after some records: {exc}") from exc


def _parse_line(raw: bytes, source: str, line: int, id_field: str, text_field: str):
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Reject(source=source, line=line, reason=f"invalid UTF-8 at byte {exc.start}")
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError as exc:
        return Reject(
            source=source, line=line, reason=f"malformed JSON: {exc.msg} at column {exc.colno}"
        )
    return record_to_document(
        record, source=source, line=line, id_field=id_field, text_field=text_field
    )
