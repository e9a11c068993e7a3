"""The Arrow schema of m3pipe's Parquet output (the contract in README.md, "Output")."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pyarrow as pa

from schemas.options import Mode, StorageDtype, VectorForm
from schemas.vector_layout import colbert_field, dense_field, scale_field, stored_encoding

OUTPUT_METADATA_KEY = b"m3pipe"

# Names an input field carried into the output (`--keep-fields`) may not take.
RESERVED_COLUMNS = frozenset(
    {
        "id",
        "chunk",
        "dense",
        "dense_scale",
        "sparse_indices",
        "sparse_values",
        "colbert",
        "colbert_scales",
        "n_tokens",
        "truncated",
    }
)


def output_schema(
    modes: tuple[Mode, ...],
    dtype: StorageDtype,
    dense_dim: int,
    colbert_dim: int,
    chunked: bool = False,
    metadata: Mapping[str, object] | None = None,
    dense_form: VectorForm = VectorForm.FLOAT,
    colbert_form: VectorForm = VectorForm.FLOAT,
) -> pa.Schema:
    """Columns in contract order; columns of modes not asked for are absent. An int8 form
    adds its scales right after its vectors (schemas/vector_layout.py)."""
    fields = [pa.field("id", pa.string(), nullable=False)]
    if chunked:
        fields.append(pa.field("chunk", pa.int32(), nullable=False))
    if Mode.DENSE in modes:
        fields.append(dense_field(stored_encoding(dense_form, dtype), dense_dim))
        if dense_form is VectorForm.INT8:
            fields.append(scale_field("dense"))
    if Mode.SPARSE in modes:
        fields.append(pa.field("sparse_indices", pa.list_(pa.int32()), nullable=False))
        fields.append(pa.field("sparse_values", pa.list_(pa.float32()), nullable=False))
    if Mode.COLBERT in modes:
        encoding = stored_encoding(colbert_form, dtype)
        fields.append(colbert_field(encoding, colbert_dim))  # schemas/vector_layout.py
        if colbert_form is VectorForm.INT8:
            fields.append(scale_field("colbert"))
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
