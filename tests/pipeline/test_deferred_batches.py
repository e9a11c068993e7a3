"""The GPU's launch-then-finish batch path (`PendingBatch`), run on the CPU: the same outputs
as the path that finishes on the device, and the host's sparse pooling against a plain one."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine import embedder
from pipeline.engine.embedder import Engine
from pipeline.engine.encoder import forward_batch, pool_sparse
from schemas.document import Document
from schemas.options import EncodeOptions, Mode, StorageDtype
from tests.corpus import mixed_texts

MODES = (Mode.DENSE, Mode.SPARSE, Mode.COLBERT)


@pytest.mark.parametrize("uniform", [False, True])
@pytest.mark.parametrize("storage", [StorageDtype.FLOAT32, StorageDtype.FLOAT16])
def test_deferred_batch_gives_the_same_outputs(tiny, uniform, storage):
    texts = mixed_texts(seed=3)
    sequences = [tiny.tokenizer(t, truncation=True, max_length=64)["input_ids"] for t in texts]
    if uniform:
        sequences = [s[:20] for s in sequences if len(s) >= 20]
    rows = np.arange(len(sequences))[::-1].copy()
    now = forward_batch(tiny, sequences, rows, MODES, storage, deferred=False).result()
    later = forward_batch(tiny, sequences, rows, MODES, storage, deferred=True).result()
    np.testing.assert_array_equal(later.rows, now.rows)
    np.testing.assert_allclose(later.dense, now.dense, atol=1e-6)
    np.testing.assert_array_equal(later.sparse_counts, now.sparse_counts)
    np.testing.assert_array_equal(later.sparse_indices, now.sparse_indices)
    np.testing.assert_allclose(later.sparse_values, now.sparse_values, atol=1e-6)
    np.testing.assert_array_equal(later.colbert_counts, now.colbert_counts)
    assert later.colbert.shape == now.colbert.shape and later.colbert.dtype == now.colbert.dtype
    np.testing.assert_allclose(later.colbert.astype(np.float32), now.colbert, atol=2e-3)


def test_engine_with_batches_in_flight_gives_the_same_table(tiny, monkeypatch):
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(mixed_texts(seed=5) * 3)]
    options = EncodeOptions(max_length=128, batch_tokens=512, dtype="float32")
    expected = Engine(tiny, options).encode(docs).table

    def deferred(*args, **kwargs):
        return forward_batch(*args, **kwargs, deferred=True)

    monkeypatch.setattr(embedder, "forward_batch", deferred)
    result = Engine(tiny, options).encode(docs)
    assert result.stats.batches > 2  # several batches, so some were in flight together
    table = result.table
    assert table.column("id").to_pylist() == [d.id for d in docs]
    for name in ("n_tokens", "sparse_indices"):
        assert table.column(name).equals(expected.column(name)), name
    for name in ("dense", "colbert", "sparse_values"):
        got = pa.compute.list_flatten(table.column(name)).to_numpy(zero_copy_only=False)
        want = pa.compute.list_flatten(expected.column(name)).to_numpy(zero_copy_only=False)
        if name != "sparse_values":
            got, want = np.stack(got), np.stack(want)
        np.testing.assert_allclose(got, want, atol=1e-5)


def _pool_reference(weights, ids, mask, unused):
    counts, indices, values = [], [], []
    for w_row, id_row, m_row in zip(weights, ids, mask, strict=True):
        best: dict[int, float] = {}
        for w, token, m in zip(w_row, id_row, m_row, strict=True):
            if m and w > 0 and token not in unused:
                best[int(token)] = max(best.get(int(token), 0.0), float(w))
        counts.append(len(best))
        for token in sorted(best):
            indices.append(token)
            values.append(best[token])
    return counts, indices, values


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda rows: st.integers(1, 12).flatmap(
            lambda width: st.tuples(
                st.lists(
                    st.lists(st.floats(-1, 2, width=32), min_size=width, max_size=width),
                    min_size=rows,
                    max_size=rows,
                ),
                st.lists(
                    st.lists(st.integers(0, 9), min_size=width, max_size=width),
                    min_size=rows,
                    max_size=rows,
                ),
                st.lists(st.integers(1, width), min_size=rows, max_size=rows),
            )
        )
    )
)
def test_host_sparse_pooling_matches_a_plain_loop(case):
    weights, ids, lengths = case
    weights = np.array(weights, dtype=np.float32)
    ids = np.array(ids, dtype=np.int64)
    mask = (np.arange(ids.shape[1]) < np.array(lengths)[:, None]).astype(np.int64)
    unused = (0, 2)
    counts, indices, values = pool_sparse(weights, ids, mask, unused, vocab=10)
    want_counts, want_indices, want_values = _pool_reference(weights, ids, mask, unused)
    assert counts.tolist() == want_counts
    assert indices.tolist() == want_indices
    np.testing.assert_array_equal(values, np.array(want_values, dtype=np.float32))
