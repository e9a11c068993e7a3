"""How closely two encodings of the same documents agree (e.g. bf16 against fp32).

Used by the benchmarks to measure each precision's accuracy and by the parity tests to
hold it to a stated bound. Inputs are per document: a dense vector, a ColBERT matrix
(tokens x dim) and a sparse {token id: weight} map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from schemas.vector_layout import colbert_rows


@dataclass(frozen=True)
class Agreement:
    dense_cosine_min: float
    dense_cosine_mean: float
    colbert_cosine_min: float  # each document's mean over its tokens, min over documents
    colbert_cosine_mean: float
    sparse_jaccard_min: float  # weighted Jaccard of the term weights, min over documents
    sparse_jaccard_mean: float
    sparse_same_terms: float  # share of documents with exactly the same term set
    sparse_max_weight_error: float  # over the terms both sides kept

    def as_dict(self, digits: int = 6) -> dict[str, float]:
        return {name: round(value, digits) for name, value in asdict(self).items()}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(norms, 1e-30)


def weighted_jaccard(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    terms = a.keys() | b.keys()
    if not terms:
        return 1.0
    low = sum(min(a.get(t, 0.0), b.get(t, 0.0)) for t in terms)
    high = sum(max(a.get(t, 0.0), b.get(t, 0.0)) for t in terms)
    return low / high if high else 1.0


def agreement(
    dense: tuple[np.ndarray, np.ndarray],
    colbert: tuple[Sequence[np.ndarray], Sequence[np.ndarray]],
    sparse: tuple[Sequence[Mapping[int, float]], Sequence[Mapping[int, float]]],
) -> Agreement:
    """Each figure compares side 0 with side 1, document by document."""
    dense_cos = _cosines(np.asarray(dense[0]), np.asarray(dense[1]))
    colbert_cos = np.array(
        [
            float(_cosines(np.asarray(x), np.asarray(y)).mean())
            for x, y in zip(*colbert, strict=True)
        ]
    )
    jaccards = np.array([weighted_jaccard(x, y) for x, y in zip(*sparse, strict=True)])
    same = [x.keys() == y.keys() for x, y in zip(*sparse, strict=True)]
    errors = [abs(x[t] - y[t]) for x, y in zip(*sparse, strict=True) for t in x.keys() & y.keys()]
    return Agreement(
        dense_cosine_min=float(dense_cos.min()),
        dense_cosine_mean=float(dense_cos.mean()),
        colbert_cosine_min=float(colbert_cos.min()),
        colbert_cosine_mean=float(colbert_cos.mean()),
        sparse_jaccard_min=float(jaccards.min()),
        sparse_jaccard_mean=float(jaccards.mean()),
        sparse_same_terms=sum(same) / len(same),
        sparse_max_weight_error=max(errors, default=0.0),
    )


def table_outputs(table: object) -> tuple[np.ndarray, list[np.ndarray], list[dict[int, float]]]:
    """Dense, ColBERT and sparse outputs of an m3pipe output table (one row per document)."""
    import pyarrow as pa

    assert isinstance(table, pa.Table)
    dense = np.array(table.column("dense").to_pylist(), dtype=np.float32)
    field = table.schema.field("colbert")
    colbert = [rows.astype(np.float32) for rows in colbert_rows(table.column("colbert"), field)]
    sparse = [
        dict(zip(ids, weights, strict=True))
        for ids, weights in zip(
            table.column("sparse_indices").to_pylist(),
            table.column("sparse_values").to_pylist(),
            strict=True,
        )
    ]
    return dense, colbert, sparse
