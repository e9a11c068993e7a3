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

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is empty or whitespace only")
        return text


class Reject(BaseModel):
    """Where a rejected record came from and why; one JSON line of `_rejects.jsonl`."""

    model_config = ConfigDict(extra="forbid")

    source: str
    line: int | None = None
    row: int | None = None
    id: str | None = None
    reason: str
