"""Reranking: (query, passage) pairs in, one relevance score per pair out."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from schemas.document import MAX_ID_CHARS, unicode_problem
from schemas.options import MAX_SUPPORTED_LENGTH

# FlagReranker's default: bge-reranker-v2-m3 is trained and evaluated at 512-1024 tokens.
DEFAULT_RERANK_MAX_LENGTH = 512


class RerankOptions(BaseModel):
    """How pairs are truncated and batched; FlagReranker's meaning for each length."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Tokens of the whole pair, specials included; also the passage's own cut before pairing.
    max_length: int = Field(default=DEFAULT_RERANK_MAX_LENGTH, ge=8, le=MAX_SUPPORTED_LENGTH)
    # Tokens of the query before pairing; None is FlagReranker's max_length * 3 // 4.
    query_max_length: int | None = Field(default=None, ge=1, le=MAX_SUPPORTED_LENGTH)
    batch_tokens: int | None = Field(default=None, ge=8)

    @property
    def effective_query_max_length(self) -> int:
        if self.query_max_length is not None:
            return self.query_max_length
        return self.max_length * 3 // 4


def plain_text(value: str, what: str) -> str:
    """`value` if it is usable text, else ValueError saying why (blank, NUL)."""
    if not value.strip():
        raise ValueError(f"{what} is empty or whitespace only")
    problem = unicode_problem(value, what)
    if problem:
        raise ValueError(problem)
    return value


class Pair(BaseModel):
    """One (query, passage) pair to score. Ids are opaque: stored, never used as paths."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    query_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    query: str
    doc_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    passage: str
    # Set when the pair came with its query's other candidates: they are ranked together.
    group: int | None = None

    @field_validator("query", "passage")
    @classmethod
    def _texts(cls, value: str, info: ValidationInfo) -> str:
        return plain_text(value, str(info.field_name))

    @field_validator("query_id", "doc_id")
    @classmethod
    def _ids(cls, value: str, info: ValidationInfo) -> str:
        problem = unicode_problem(value, str(info.field_name))
        if problem:
            raise ValueError(problem)
        return value
