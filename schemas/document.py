"""One input document, and the record of one rejected input."""

from __future__ import annotations

import re
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_ID_CHARS = 1024
# The default --max-record-bytes: an 8192-token document is ~30-100 KB of text; this leaves
# a wide margin (long documents to chunk) while one record stays far from a worker's memory.
DEFAULT_MAX_RECORD_BYTES = 8 * 1024 * 1024
# A lone UTF-16 surrogate (e.g. "\\ud800" escaped in JSON) is not a character: it cannot be
# encoded as UTF-8, so no tokenizer, Parquet file or JSON line can hold it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogate(value: str) -> bool:
    return _SURROGATE.search(value) is not None


def storable(value: str) -> bool:
    """No NUL and no lone surrogate: what `unicode_problem` finds nothing in (faster:
    an ASCII string, the common case, is known to hold no surrogate without a scan)."""
    return "\x00" not in value and (value.isascii() or _SURROGATE.search(value) is None)


def unicode_problem(value: str, what: str) -> str | None:
    """Why `value` cannot be stored as text (NUL, lone surrogates), or None."""
    if "\x00" in value:
        return f"{what} contains NUL characters (binary or UTF-16 data?)"
    if has_surrogate(value):
        return f"{what} contains a lone surrogate (invalid Unicode)"
    return None


def printable(value: str) -> str:
    """`value` with lone surrogates written as \\udXXX escapes, so it can be written out."""
    if not has_surrogate(value):
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


class Origin(NamedTuple):
    """Where a reader found a document: its line of a plain JSONL input and its bytes."""

    source: str  # the input's URI
    line: int
    start: int
    end: int  # past its newline


class Document(BaseModel):
    """A document to embed. `id` is opaque to m3pipe: it is stored, never used as a path."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    text: str
    # Extra input columns carried into the output (`--keep-fields`), as strings.
    fields: dict[str, str | None] | None = None
    # Set by a reader that can point at the document: the producer then sends its shard by
    # reference. Never serialised; a worker ignores it. (A field, not a private attribute:
    # those cost ~2 us per document to set up.)
    origin: Origin | None = Field(default=None, exclude=True, repr=False)

    @field_validator("id")
    @classmethod
    def _id_storable(cls, doc_id: str) -> str:
        problem = unicode_problem(doc_id, "id")
        if problem:
            raise ValueError(problem)
        return doc_id

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is empty or whitespace only")
        # NUL never occurs in real text: it marks binary or UTF-16 data, and many stores
        # downstream (PostgreSQL text, C strings) cannot hold it. Rejected, not stripped.
        problem = unicode_problem(text, "text")
        if problem:
            raise ValueError(problem)
        return text

    @field_validator("fields")
    @classmethod
    def _fields_storable(cls, fields: dict[str, str | None] | None) -> dict[str, str | None] | None:
        for name, value in (fields or {}).items():
            problem = unicode_problem(name, "a kept field name") or (
                value and unicode_problem(value, f"kept field {name!r}")
            )
            if problem:
                raise ValueError(printable(problem))
        return fields

    @classmethod
    def trusted(cls, doc_id: str, text: str, origin: Origin | None = None) -> Document:
        """The Document `Document(id=doc_id, text=text, fields=None, origin=origin)`
        would be, made without running validation: for a reader that has checked exactly
        what the validators check (DocumentShape.quick). Validating costs ~1.5 us a
        document, a third of what the producer spends on one (docs/scale.md); this ~0.5.
        tests/schemas/test_document.py holds the two equal."""
        doc = object.__new__(cls)
        state = {"id": doc_id, "text": text, "fields": None, "origin": origin}
        object.__setattr__(doc, "__dict__", state)
        object.__setattr__(doc, "__pydantic_fields_set__", {"id", "text", "fields", "origin"})
        object.__setattr__(doc, "__pydantic_extra__", None)
        object.__setattr__(doc, "__pydantic_private__", None)
        return doc


class Reject(BaseModel):
    """Where a rejected record came from and why; one JSON line of `_rejects.jsonl`."""

    model_config = ConfigDict(extra="forbid")

    source: str
    line: int | None = None
    row: int | None = None
    id: str | None = None  # the document's id (for a rerank pair: the doc_id)
    query_id: str | None = None  # rerank pairs only
    reason: str

    @field_validator("source", "id", "query_id", "reason")
    @classmethod
    def _writable(cls, value: str | None) -> str | None:
        # A reject must always be writable, even of an id that is not valid Unicode.
        return None if value is None else printable(value)
