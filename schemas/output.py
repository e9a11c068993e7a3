"""The Arrow schema of m3pipe's Parquet output (the contract in README.md, "Output")."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pyarrow as pa

from schemas.options import Mode, StorageDtype
from schemas.vector_layout import colbert_field

OUTPUT_METADATA_KEY = b"m3pipe"

# Names an input field carried into the output (`--keep-fields`) may not take.
RESERVED_COLUMNS = frozenset(
    {"id", "chunk", "dense", "sparse_indices", "sparse_values", "colbert", "n_tokens", "truncated"}
)

_ARROW_FLOAT = {StorageDtype.FLOAT16: pa.float16(), StorageDtype.FLOAT32: pa.float32()}


def vector_type(dtype: StorageDtype, dim: int) -> pa.DataType:
    return pa.list_(_ARROW_FLOAT[dtype], dim)


def output_schema(
    modes: tuple[Mode, ...],
    dtype: StorageDtype,
    dense_dim: int,
    colbert_dim: int,
    chunked: bool = False,
    metadata: Mapping[str, object] | None = None,
) -> pa.Schema:
    """Columns in contract order; columns of modes not asked for are absent."""
    fields = [pa.field("id", pa.string(), nullable=False)]
    if chunked:
        fields.append(pa.field("chunk", pa.int32(), nullable=False))
    if Mode.DENSE in modes:
        fields.append(pa.field("dense", vector_type(dtype, dense_dim), nullable=False))
    if Mode.SPARSE in modes:
        fields.append(pa.field("sparse_indices", pa.list_(pa.int32()), nullable=False))
        fields.append(pa.field("sparse_values", pa.list_(pa.float32()), nullable=False))
    if Mode.COLBERT in modes:
        fields.append(colbert_field(dtype, colbert_dim))  # schemas/vector_layout.py
    fields.append(pa.field("n_tokens", pa.int32(), nullable=False))
    fields.append(pa.field("truncated", pa.bool_(), nullable=False))
    return pa.schema(fields, metadata=_schema_metadata(metadata))


def _schema_metadata(metadata: Mapping[str, object] | None) -> dict[bytes, bytes] | None:
    if metadata is None:
        return None
    return {OUTPUT_METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()}


def read_output_metadata(schema: pa.Schema) -> dict[str, object]:
    """The m3pipe metadata of a written file's schema (empty if absent)."""
    raw = (schema.metadata or {}).get(OUTPUT_METADATA_KEY)
    return json.loads(raw) if raw else {}


def rerank_schema(metadata: Mapping[str, object] | None = None) -> pa.Schema:
    """Columns of a rerank output file: one row per scored (query, passage) pair."""
    fields = [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),  # the raw logit
        pa.field("score_normalized", pa.float32(), nullable=False),  # its sigmoid
        pa.field("rank", pa.int32(), nullable=True),  # within the query's candidates; 1 = best
        pa.field("n_tokens", pa.int32(), nullable=False),
    ]
    return pa.schema(fields, metadata=_schema_metadata(metadata))


def search_results_schema(metadata: Mapping[str, object] | None = None) -> pa.Schema:
    """Columns of `m3pipe search` results: one row per (run, query, ranked document). `score`
    ranks within the run (for the rerank run: the cross-encoder's logit); the three mode
    scores are the document's own (null where a mode was not scored)."""
    fields = [
        pa.field("run", pa.string(), nullable=False),  # dense, sparse, colbert, hybrid, rerank
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),  # 1 = best
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("dense", pa.float32(), nullable=True),
        pa.field("sparse", pa.float32(), nullable=True),
        pa.field("colbert", pa.float32(), nullable=True),
    ]
    return pa.schema(fields, metadata=_schema_metadata(metadata))
