"""Options of one encoding run: what to compute and how to store it."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_SUPPORTED_LENGTH = 8192
MAX_POOL_FACTOR = 16


class Mode(StrEnum):
    DENSE = "dense"
    SPARSE = "sparse"
    COLBERT = "colbert"


class StorageDtype(StrEnum):
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class VectorForm(StrEnum):
    """How dense or ColBERT vectors are stored (schemas/vector_layout.py; docs/pipeline.md).

    float: the `dtype` floats, exactly as computed (FlagEmbedding's values). float16,
    float32: floats of that width whatever `dtype` says (float32 dense beside float16
    ColBERT: the dense vector as computed, the large column halved). int8: codes of
    -127..127 with a float32 scale per vector. binary: one sign bit a dimension (set where the
    value is > 0), packed 8 to a byte as sentence-transformers' "ubinary" precision does."""

    FLOAT = "float"
    FLOAT16 = "float16"
    FLOAT32 = "float32"
    INT8 = "int8"
    BINARY = "binary"


class StoragePreset(StrEnum):
    """`--storage`: named sets of the storage options (STORAGE_PRESETS)."""

    EXACT = "exact"
    COMPACT = "compact"


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
    # Compact storage (issue 31); the defaults store every value as computed.
    dense_storage: VectorForm = VectorForm.FLOAT
    colbert_storage: VectorForm = VectorForm.FLOAT
    # A document's ColBERT vectors clustered to ceil(n / colbert_pool) (token pooling).
    colbert_pool: int = Field(default=1, ge=1, le=MAX_POOL_FACTOR)
    sparse_top_k: int | None = Field(default=None, ge=1)  # the K heaviest terms a row

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

    @model_validator(mode="after")
    def _storage_of_modes_asked_for(self) -> EncodeOptions:
        exact = EncodeOptions.model_construct()
        for name, mode in STORAGE_FIELDS.items():
            if getattr(self, name) != getattr(exact, name) and mode not in self.modes:
                raise ValueError(f"{name} applies to {mode.value} vectors, not asked for")
        return self

    @property
    def chunked(self) -> bool:
        return self.long_docs is LongDocPolicy.CHUNK

    def storage(self) -> dict[str, object]:
        """The storage options that differ from exact storage (empty for exact output):
        what a file's metadata records, so outputs stored otherwise never pass as equal."""
        return self.model_dump(mode="json", include=set(STORAGE_FIELDS), exclude_defaults=True)


# Each storage option, and the mode whose vectors it applies to.
STORAGE_FIELDS = {
    "dense_storage": Mode.DENSE,
    "colbert_storage": Mode.COLBERT,
    "colbert_pool": Mode.COLBERT,
    "sparse_top_k": Mode.SPARSE,
}

# What each --storage preset sets (explicit flags go over it). `compact` is the smallest
# storage that kept the hybrid's MRR@10 within 1% of exact float16 storage on the trained
# proxy (docs/pipeline.md, "Compact storage"; benchmarks/study_storage.py).
STORAGE_PRESETS: dict[StoragePreset, dict[str, object]] = {
    StoragePreset.EXACT: {},
    StoragePreset.COMPACT: {"dense_storage": "int8", "colbert_storage": "binary"},
}
