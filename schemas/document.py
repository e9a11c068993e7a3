"""One input document, and the record of one rejected input."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_ID_CHARS = 1024


class Document(BaseModel):
    """A document to embed. `id` is opaque to m3pipe: it is stored, never used as a path."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    text: str
    # Extra input columns carried into the output (`--keep-fields`), as strings.
    fields: dict[str, str | None] | None = None

    @field_validator("id")
    @classmethod
    def _id_without_nul(cls, doc_id: str) -> str:
        if "\x00" in doc_id:
            raise ValueError("id contains NUL characters")
        return doc_id

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is empty or whitespace only")
        # NUL never occurs in real text: it marks binary or UTF-16 data, and many stores
        # downstream (PostgreSQL text, C strings) cannot hold it. Rejected, not stripped.
        if "\x00" in text:
            raise ValueError("text contains NUL characters (binary or UTF-16 data?)")
        return text


class Reject(BaseModel):
    """Where a rejected record came from and why; one JSON line of `_rejects.jsonl`."""

    model_config = ConfigDict(extra="forbid")

    source: str
    line: int | None = None
    row: int | None = None
    id: str | None = None  # the document's id (for a rerank pair: the doc_id)
    query_id: str | None = None  # rerank pairs only
    reason: str
