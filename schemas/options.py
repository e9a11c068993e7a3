"""Options of one encoding run: what to compute and how to store it."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_SUPPORTED_LENGTH = 8192


class Mode(StrEnum):
    DENSE = "dense"
    SPARSE = "sparse"
    COLBERT = "colbert"


class StorageDtype(StrEnum):
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class LongDocPolicy(StrEnum):
    TRUNCATE = "truncate"
    CHUNK = "chunk"


class EncodeOptions(BaseModel):
    """What the engine computes and writes. Serialised as JSON into manifests and messages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modes: tuple[Mode, ...] = (Mode.DENSE, Mode.SPARSE, Mode.COLBERT)
    max_length: int = Field(default=MAX_SUPPORTED_LENGTH, ge=8, le=MAX_SUPPORTED_LENGTH)
    # Padded tokens per forward pass; None picks a default for the device.
    batch_tokens: int | None = Field(default=None, ge=8)
    dtype: StorageDtype = StorageDtype.FLOAT16
    long_docs: LongDocPolicy = LongDocPolicy.TRUNCATE
    chunk_overlap: int = Field(default=0, ge=0)

    @field_validator("modes", mode="before")
    @classmethod
    def _parse_modes(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("modes")
    @classmethod
    def _modes_unique_nonempty(cls, modes: tuple[Mode, ...]) -> tuple[Mode, ...]:
        if not modes:
            raise ValueError("at least one mode is required (dense, sparse, colbert)")
        # Canonical order, duplicates removed, so equal requests compare equal.
        return tuple(mode for mode in Mode if mode in modes)

    @model_validator(mode="after")
    def _overlap_fits_window(self) -> EncodeOptions:
        window = self.max_length - 2  # <s> and </s> take two places in every chunk
        if self.long_docs is LongDocPolicy.CHUNK and self.chunk_overlap >= window:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than the chunk's "
                f"content window (max_length - 2 = {window})"
            )
        return self

    @property
    def chunked(self) -> bool:
        return self.long_docs is LongDocPolicy.CHUNK
