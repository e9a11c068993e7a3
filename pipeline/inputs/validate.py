"""Validation of raw records into Documents; anything else becomes a Reject with a reason."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from pydantic import ValidationError

from pipeline.errors import InputError
from schemas.document import MAX_ID_CHARS, Document, Origin, Reject, storable, unicode_problem


class InputItem(NamedTuple):
    """One input record, validated: where it was read and what it became."""

    result: Any  # what the task's RecordShape made of it (a Document, pairs...) or a Reject
    line: int | None = None  # JSONL: 1-based line
    row: int | None = None  # CSV, Parquet: 1-based data row (header not counted)
    file: str | None = None  # the file inside a directory input, when it is one

    @property
    def where(self) -> str:
        if self.line is not None:
            return f"line {self.line}"
        if self.row is not None:
            return f"row {self.row}"
        return "file"


class RecordShape(Protocol):
    """What one record of a task's input holds: the columns read, and its validation.

    The JSONL, CSV and Parquet readers are shared by every task; the shape says what a
    record must be (a document to embed, or pairs to rerank).
    """

    def columns(self, available: Sequence[str], source: str) -> list[str]:
        """The columns to read, or InputError naming the first missing one."""
        ...

    def id_columns(self) -> tuple[str, ...]:
        """Columns whose integer values are read as their decimal strings."""
        ...

    def convert(
        self,
        record: Any,
        *,
        source: str,
        line: int | None = None,
        row: int | None = None,
        origin: Origin | None = None,
    ) -> Any:
        """The record validated (a Document, ...) or a Reject; `origin`: where it was read,
        for a shape that keeps it."""
        ...


def require_columns(
    wanted: Sequence[str],
    available: Sequence[str],
    source: str,
    hint: str = "use --id-field/--text-field/--keep-fields",
) -> list[str]:
    columns = list(dict.fromkeys(wanted))
    missing = [c for c in columns if c not in available]
    if missing:
        raise InputError(
            f"{source}: no column {missing[0]!r} (columns: {list(available)[:20]}); {hint}"
        )
    return columns


@dataclass(frozen=True)
class DocumentShape:
    """Records to embed: an id, a text and optional kept fields."""

    id_field: str = "id"
    text_field: str = "text"
    keep_fields: tuple[str, ...] = ()

    def columns(self, available: Sequence[str], source: str) -> list[str]:
        return require_columns(
            (self.id_field, self.text_field, *self.keep_fields), available, source
        )

    def id_columns(self) -> tuple[str, ...]:
        return (self.id_field,)

    def convert(
        self,
        record: Any,
        *,
        source: str,
        line: int | None = None,
        row: int | None = None,
        origin: Origin | None = None,
    ) -> Document | Reject:
        return record_to_document(
            record,
            source=source,
            line=line,
            row=row,
            id_field=self.id_field,
            text_field=self.text_field,
            keep_fields=self.keep_fields,
            origin=origin,
        )

    def quick(self, record: Any, origin: Origin | None = None) -> Document | None:
        """The Document for a record that is plainly valid (`plain`), made without
        pydantic; None for anything else, which `convert` then judges with its reasons."""
        plain = self.plain(record)
        return None if plain is None else Document.trusted(plain[0], plain[1], origin)

    def plain(self, record: Any) -> tuple[str, str] | None:
        """(id, text) of a record that is plainly valid: an object whose id and text are
        storable strings, the id within its length and the text not blank; None for
        anything else. Kept fields always take `convert`."""
        if self.keep_fields or type(record) is not dict:
            return None
        doc_id = record.get(self.id_field)
        text = record.get(self.text_field)
        if (
            type(doc_id) is str
            and type(text) is str
            and 0 < len(doc_id) <= MAX_ID_CHARS
            and storable(doc_id)
            and storable(text)
            and text.strip()
        ):
            return doc_id, text
        return None


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def record_to_document(
    record: Any,
    *,
    source: str,
    line: int | None = None,
    row: int | None = None,
    id_field: str = "id",
    text_field: str = "text",
    keep_fields: tuple[str, ...] = (),
    origin: Origin | None = None,
) -> Document | Reject:
    """A Document, or a Reject saying exactly what is wrong with the record."""

    def reject(reason: str, doc_id: str | None = None) -> Reject:
        return Reject(source=source, line=line, row=row, id=doc_id, reason=reason)

    if not isinstance(record, dict):
        return reject(f"record is a JSON {type_name(record)}, expected an object")
    if id_field not in record:
        return reject(f"missing id field {id_field!r}")
    doc_id = record[id_field]
    if not isinstance(doc_id, str):
        return reject(f"id field {id_field!r} must be a string, got {type_name(doc_id)}")
    if not doc_id:
        return reject(f"id field {id_field!r} is empty")
    if len(doc_id) > MAX_ID_CHARS:
        return reject(f"id is longer than {MAX_ID_CHARS} characters", doc_id[:64] + "...")
    problem = unicode_problem(doc_id, "id")
    if problem:
        return reject(problem, doc_id)
    if text_field not in record:
        return reject(f"missing text field {text_field!r}", doc_id)
    text = record[text_field]
    if not isinstance(text, str):
        return reject(f"text field {text_field!r} must be a string, got {type_name(text)}", doc_id)
    fields = {name: _as_field(record.get(name)) for name in keep_fields} if keep_fields else None
    try:
        return Document(id=doc_id, text=text, fields=fields, origin=origin)
    except ValidationError as exc:
        reason = "; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors())
        return reject(reason, doc_id)


def _as_field(value: object) -> str | None:
    """Kept fields are stored as strings: JSON values other than strings are JSON-encoded."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)
