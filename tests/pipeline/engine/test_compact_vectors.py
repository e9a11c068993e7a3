"""pipeline/engine/compact_vectors.py: int8 with a scale per vector, sign bits, token pooling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.engine import compact_vectors as cv

FLOATS = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=FLOATS))
def test_int8_is_within_half_a_step_of_every_value(vectors):
    codes, scales = cv.int8_per_vector(vectors)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    assert codes.min(initial=0) >= -127  # symmetric: -128 is never used
    error = np.abs(cv.from_int8(codes, scales) - vectors)
    assert np.all(error <= scales[:, None] * 0.5 + 1e-6 * np.abs(vectors) + 1e-30)
    # The largest magnitude of each vector is exact to its scale, unless the vector is so
    # small (peak under ~1.5e-36) that its scale is a subnormal float32, which has lost
    # precision (hypothesis found 1.54e-42 stored as 122 steps): never an embedding's case.
    peak = np.abs(vectors).argmax(axis=1)
    normal = scales >= np.finfo(np.float32).tiny
    peak_codes = np.abs(codes[np.arange(len(codes)), peak])
    assert np.all(peak_codes[normal] == 127) and np.all(peak_codes[scales == 0] == 0)


def test_a_zero_vector_stays_zero():
    codes, scales = cv.int8_per_vector(np.zeros((2, 8), np.float32))
    assert not codes.any() and not scales.any()
    assert not cv.from_int8(codes, scales).any()


@given(arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 70)), elements=FLOATS))
def test_sign_bits_round_trip_and_hamming_is_the_signs_dot_product(vectors):
    dim = vectors.shape[1]
    bits = cv.sign_bits(vectors)
    assert bits.dtype == np.uint8 and bits.shape == (len(vectors), (dim + 7) // 8)
    signs = cv.from_sign_bits(bits, dim)
    np.testing.assert_array_equal(signs, np.where(vectors > 0, 1.0, -1.0))
    hamming = np.unpackbits(bits[:, None] ^ bits[None], axis=2, count=dim).sum(axis=2, dtype=int)
    np.testing.assert_array_equal(signs @ signs.T, dim - 2 * hamming)


def test_sign_bits_are_numpys_packbits_order():
    bits = cv.sign_bits(np.array([[1, -1, 1, 1, -1, -1, -1, 1, 0.5]], np.float32))
    assert bits.tolist() == [[0b10110001, 0b10000000]]  # big-endian, as sentence-transformers


def test_pooling_groups_near_vectors_and_keeps_one_per_cluster():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)).astype(np.float32)
    tokens = np.repeat(centres, 2, axis=0) + rng.normal(scale=1e-3, size=(6, 16))
    pooled = cv.pool_tokens(tokens, 2)
    assert pooled.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, rtol=1e-5)
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    assert np.allclose(np.sort((pooled @ unit.T).max(axis=1)), 1.0, atol=1e-3)  # each a centre
    assert cv.pool_tokens(tokens, 3).shape == (2, 16)
    assert cv.pool_tokens(tokens[:1], 2).shape == (1, 16)
    np.testing.assert_array_equal(cv.pool_tokens(tokens, 1), tokens.astype(np.float32))
    with pytest.raises(ValueError, match="at least 1"):
        cv.pool_tokens(tokens, 0)


@given(
    st.sampled_from([np.float16, np.float32]).flatmap(
        lambda dtype: arrays(dtype, st.tuples(st.integers(1, 4), st.integers(1, 3),
                                              st.integers(1, 20)),
                             elements=st.floats(width=16 if dtype is np.float16 else 32))
    ),
    st.integers(1, 200),
)  # fmt: skip
def test_sign_bits_read_from_the_integer_bits_are_value_gt_0_even_for_nan_inf_and_zeros(
    values, block_bytes
):
    """The integer reading of the bits (fast, a block of rows at a time) against the float
    comparison, on every kind of value: NaN of either sign, infinities, +-0, subnormals."""
    want = np.packbits(values > 0, axis=-1)
    np.testing.assert_array_equal(cv.sign_bits(values, block_bytes), want)
    np.testing.assert_array_equal(cv.sign_bits(values), want)


@pytest.mark.parametrize(
    ("dtype", "bits"),
    [(np.uint16, [0x0000, 0x0001, 0x7BFF, 0x7C00, 0x7C01, 0x7FFF, 0x8000, 0x8001, 0xFC00,
                  0xFFFF]),
     (np.uint32, [0, 1, 0x7F7FFFFF, 0x7F800000, 0x7F800001, 0x7FFFFFFF, 0x80000000,
                  0x80000001, 0xFF800000, 0xFFFFFFFF])],
)  # fmt: skip
def test_sign_bits_at_the_edges_of_the_positive_bit_patterns(dtype, bits):
    """+0, the smallest subnormal, the largest finite, +inf, the smallest and largest NaN
    payloads, and their negatives: a bit exactly for the positive ones."""
    values = np.array([bits], dtype).view(np.float16 if dtype is np.uint16 else np.float32)
    np.testing.assert_array_equal(cv.sign_bits(values, 1), np.packbits(values > 0, axis=-1))
