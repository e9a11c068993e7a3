"""Compact forms of embedding vectors: int8 with a scale per vector, sign bits, and token
pooling for ColBERT (issue 31). Pure numpy, on [n, D] float arrays.

Each form is measured for retrieval quality on the trained proxy before it becomes a storage
choice (benchmarks/study_storage.py; docs/engine.md, "Compact vectors"): random weights say
little about what quantisation costs.

- int8: `codes * scale` with `scale = max|v| / 127` per vector, codes rounded to nearest;
  a quarter of float32's bytes (half of float16's) plus 4 bytes a vector.
- sign bits: one bit a dimension, 1 where the value is > 0, packed big-endian in bytes as
  numpy.packbits and sentence-transformers' "ubinary" precision do; 1/16 of float16's bytes.
  Scored either asymmetrically (float query against the document's +-1 signs) or
  symmetrically (both as signs: D - 2 * Hamming distance, the same number as their dot).
- token pooling (Clavie et al. 2024, "Reducing the footprint of multi-vector retrieval with
  minimal performance impact via token pooling"): a document's token vectors are grouped by
  Ward hierarchical clustering into ceil(n / factor) clusters; each cluster's mean,
  L2-normalised, replaces its members.
"""

from __future__ import annotations

import math

import numpy as np

INT8_LIMIT = 127  # symmetric: -127..127, so that -v is exactly representable too


def int8_per_vector(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes int8 [n, D], scales float32 [n]) with vectors ~= codes * scales[:, None]."""
    values = np.asarray(vectors, dtype=np.float32)
    scales = np.abs(values).max(axis=1, initial=0.0) / INT8_LIMIT
    safe = np.where(scales > 0, scales, 1.0)  # an all-zero vector stays all zero
    codes = np.clip(np.rint(values / safe[:, None]), -INT8_LIMIT, INT8_LIMIT).astype(np.int8)
    return codes, scales.astype(np.float32)


def from_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * np.asarray(scales, np.float32)[:, None]


# A float is > 0 exactly when its bits, read as a signed integer of its size, lie in
# (0, +inf]: the sign bit clear, not +0, not a NaN. Comparing integers is 3x faster here
# than comparing float16 values (numpy has no native float16 compare).
_POSITIVE_BITS = {
    np.dtype(np.float16): (np.int16, 0x7C00),
    np.dtype(np.float32): (np.int32, 0x7F800000),
}


def sign_bits(vectors: np.ndarray) -> np.ndarray:
    """[..., ceil(D / 8)] uint8: bit set where the value is > 0 (packed along the last axis)."""
    values = np.asarray(vectors)
    as_int = _POSITIVE_BITS.get(values.dtype)
    if as_int is None:
        return np.packbits(values > 0, axis=-1)
    ints = values.view(as_int[0])
    return np.packbits((ints > 0) & (ints <= as_int[1]), axis=-1)


def from_sign_bits(bits: np.ndarray, dim: int) -> np.ndarray:
    """[n, dim] float32 of +1 (bit set) and -1."""
    unpacked = np.unpackbits(bits, axis=1, count=dim)
    return unpacked.astype(np.float32) * 2.0 - 1.0


def pool_tokens(vectors: np.ndarray, factor: int, window: int | None = None) -> np.ndarray:
    """A document's [n, D] token vectors pooled to at most ceil(n / factor) (see the
    module's note); factor 1, or a single vector, returns them as they are (float32).
    `window`: cluster consecutive runs of at most that many vectors on their own (Ward's
    clustering holds n^2 / 2 distances), each to ceil(run / factor)."""
    if factor < 1:
        raise ValueError(f"a pool factor is at least 1, not {factor}")
    values = np.asarray(vectors, dtype=np.float32)
    if window is not None and len(values) > window:
        runs = [values[start : start + window] for start in range(0, len(values), window)]
        return np.concatenate([pool_tokens(run, factor) for run in runs])
    clusters = math.ceil(len(values) / factor)
    if factor == 1 or clusters == len(values):
        return values
    from scipy.cluster.hierarchy import fcluster, linkage

    labels = fcluster(linkage(values, method="ward"), clusters, criterion="maxclust")
    pooled = np.stack([values[labels == label].mean(axis=0) for label in np.unique(labels)])
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.where(norms > 0, norms, 1.0)
