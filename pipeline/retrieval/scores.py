"""bge-m3's three relevance scores between queries and a batch of documents, vectorised.

The same arithmetic as FlagEmbedding's `BGEM3FlagModel`:
- dense: the inner product of the L2-normalised CLS vectors;
- sparse (`compute_lexical_matching_score`): the sum, over the token ids both sides have, of
  the product of their weights;
- ColBERT (`colbert_score`): for each query vector the best inner product with any document
  vector, averaged over the query's vectors;
- the hybrid (`compute_score`): sum(w_m * s_m) / sum(w_m) over the modes weighted.
Scores are (documents, queries) float32 arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.options import Mode

COLBERT_BLOCK_VALUES = 32 << 20  # query x document vector products per block (128 MB)
# Queries scored together: every (..., queries) array is bounded by the block, not by the
# query set (10^5 queries once asked for a 745 GiB matrix). A block also holds at most
# QUERY_BLOCK_VECTORS ColBERT vectors (one longer query is a block alone), so one
# document's products with a block stay within max(COLBERT_BLOCK_VALUES, 8192 x 8192).
QUERY_BLOCK = 256
QUERY_BLOCK_VECTORS = 4096


@dataclass
class Vectors:
    """Queries or documents as flat arrays: row i's sparse terms are
    sparse_indices[sparse_offsets[i]:sparse_offsets[i+1]], its ColBERT vectors likewise."""

    ids: list[str]
    dense: np.ndarray | None = None  # (n, dim)
    sparse_indices: np.ndarray | None = None  # (terms,) int
    sparse_values: np.ndarray | None = None  # (terms,) float32
    sparse_offsets: np.ndarray | None = None  # (n + 1,)
    colbert: np.ndarray | None = None  # (vectors, dim)
    colbert_offsets: np.ndarray | None = None  # (n + 1,)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, start: int, end: int) -> Vectors:
        """Rows [start, end) as their own Vectors (views; offsets rebased)."""

        def flat(values: np.ndarray | None, offsets: np.ndarray | None) -> tuple[Any, Any]:
            if values is None or offsets is None:
                return values, offsets
            first, last = offsets[start], offsets[end]
            return values[first:last], offsets[start : end + 1] - first

        sparse_indices, sparse_offsets = flat(self.sparse_indices, self.sparse_offsets)
        sparse_values, _ = flat(self.sparse_values, self.sparse_offsets)
        colbert, colbert_offsets = flat(self.colbert, self.colbert_offsets)
        return Vectors(
            ids=self.ids[start:end],
            dense=None if self.dense is None else self.dense[start:end],
            sparse_indices=sparse_indices,
            sparse_values=sparse_values,
            sparse_offsets=sparse_offsets,
            colbert=colbert,
            colbert_offsets=colbert_offsets,
        )


def query_blocks(queries: Vectors) -> list[tuple[int, Vectors]]:
    """(first query, its block) for blocks of at most QUERY_BLOCK queries and
    QUERY_BLOCK_VECTORS ColBERT vectors (a longer query alone)."""
    offsets = queries.colbert_offsets
    blocks, start = [], 0
    while start < len(queries):
        end = start + 1
        while (
            end < len(queries)
            and end - start < QUERY_BLOCK
            and (offsets is None or offsets[end + 1] - offsets[start] <= QUERY_BLOCK_VECTORS)
        ):
            end += 1
        blocks.append((start, queries.rows(start, end)))
        start = end
    return blocks


def dense_scores(queries: Vectors, docs: Vectors) -> np.ndarray:
    assert queries.dense is not None and docs.dense is not None
    return docs.dense @ queries.dense.T


def sparse_scores(queries: Vectors, docs: Vectors) -> np.ndarray:
    """Only the documents' terms that some query has are looked at."""
    assert queries.sparse_indices is not None and queries.sparse_values is not None
    assert queries.sparse_offsets is not None
    assert docs.sparse_indices is not None and docs.sparse_values is not None
    assert docs.sparse_offsets is not None
    terms, column = np.unique(queries.sparse_indices, return_inverse=True)
    weights = np.zeros((len(terms), len(queries)), dtype=np.float32)  # term x query
    query_of = np.repeat(np.arange(len(queries)), np.diff(queries.sparse_offsets))
    weights[column, query_of] = queries.sparse_values
    position = np.searchsorted(terms, docs.sparse_indices)
    position[position == len(terms)] = 0
    shared = terms[position] == docs.sparse_indices if len(terms) else np.zeros(0, bool)
    doc_of = np.repeat(np.arange(len(docs)), np.diff(docs.sparse_offsets))[shared]
    products = weights[position[shared]] * docs.sparse_values[shared, None]
    scores = np.zeros((len(docs), len(queries)), dtype=np.float32)
    np.add.at(scores, doc_of, products)
    return scores


def colbert_scores(queries: Vectors, docs: Vectors) -> np.ndarray:
    """Blocks of documents bounded by COLBERT_BLOCK_VALUES products, whatever their lengths."""
    assert queries.colbert is not None and queries.colbert_offsets is not None
    assert docs.colbert is not None and docs.colbert_offsets is not None
    query_vectors = len(queries.colbert)
    # (query vectors, queries): the mean over each query's own vectors. Called with a block
    # of queries (query_blocks), so at most QUERY_BLOCK_VECTORS x QUERY_BLOCK values.
    counts = np.diff(queries.colbert_offsets)
    owner = np.repeat(np.arange(len(queries)), counts)
    mean = np.zeros((query_vectors, len(queries)), dtype=np.float32)
    mean[np.arange(query_vectors), owner] = 1.0 / counts[owner]
    scores = np.zeros((len(docs), len(queries)), dtype=np.float32)
    offsets = docs.colbert_offsets
    rows = np.flatnonzero(np.diff(offsets) > 0)  # a document without vectors scores 0
    budget = max(1, COLBERT_BLOCK_VALUES // max(query_vectors, 1))
    first = 0
    while first < len(rows):
        last = first + 1  # at least one document, however long
        while last < len(rows) and offsets[rows[last] + 1] - offsets[rows[first]] <= budget:
            last += 1
        block_rows = rows[first:last]
        # Contiguous: the documents skipped in between hold no vectors.
        start, end = offsets[block_rows[0]], offsets[block_rows[-1] + 1]
        products = docs.colbert[start:end] @ queries.colbert.T  # (doc vectors, query vectors)
        best = np.maximum.reduceat(products, offsets[block_rows] - start, axis=0)
        scores[block_rows] = best @ mean
        first = last
    return scores


SCORERS = {Mode.DENSE: dense_scores, Mode.SPARSE: sparse_scores, Mode.COLBERT: colbert_scores}


def hybrid(scores: dict[Mode, np.ndarray], weights: dict[Mode, float]) -> np.ndarray:
    """FlagEmbedding's weighted mean of the modes with a weight above zero."""
    used = [mode for mode in Mode if weights.get(mode, 0.0) > 0]
    total = sum(weights[mode] for mode in used)
    combined = sum(scores[mode] * np.float32(weights[mode]) for mode in used)
    return np.asarray(combined / np.float32(total), dtype=np.float32)
