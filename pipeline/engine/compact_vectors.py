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


# A float is > 0 exactly when its bits, read as an unsigned integer of its size, lie in
# [1, +inf's bits]: the sign bit clear, not +0, not a NaN; that is, bits - 1 (wrapping at 0)
# below +inf's bits, one comparison. Comparing integers is 3x faster here than comparing
# float16 values (numpy has no native float16 compare).
_POSITIVE_BITS = {
    np.dtype(np.float16): (np.uint16, 0x7C00),
    np.dtype(np.float32): (np.uint32, 0x7F800000),
}
# Values read a block at a time: a batch's ColBERT vectors (32 x 511 x 1024 float16, 33 MB)
# whole made each temporary a trip to memory (0.33 ms a document); in blocks that stay in the
# cache, 0.10 ms.
SIGN_BLOCK_BYTES = 1 << 20


def sign_bits(vectors: np.ndarray, block_bytes: int = SIGN_BLOCK_BYTES) -> np.ndarray:
    """[..., ceil(D / 8)] uint8: bit set where the value is > 0 (packed along the last axis)."""
    values = np.ascontiguousarray(vectors)
    as_uint = _POSITIVE_BITS.get(values.dtype)
    if as_uint is None or values.size == 0:
        return np.packbits(values > 0, axis=-1)
    dim = values.shape[-1]
    flat = values.reshape(-1, dim).view(as_uint[0])
    packed = np.empty((len(flat), (dim + 7) // 8), np.uint8)
    rows = max(1, block_bytes // (flat.itemsize * dim))
    shifted = np.empty((min(rows, len(flat)), dim), flat.dtype)
    positive = np.empty(shifted.shape, bool)
    one, limit = flat.dtype.type(1), flat.dtype.type(as_uint[1])
    for start in range(0, len(flat), rows):
        block = flat[start : start + rows]
        np.subtract(block, one, out=shifted[: len(block)])  # wraps: +0 becomes the largest
        np.less(shifted[: len(block)], limit, out=positive[: len(block)])
        packed[start : start + len(block)] = np.packbits(positive[: len(block)], axis=-1)
    return packed.reshape(*values.shape[:-1], packed.shape[-1])


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
