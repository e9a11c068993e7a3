"""CUDA out-of-memory handling, simulated: no GPU runs in CI."""

import numpy as np
import pytest
import torch

from pipeline.engine import encoder
from pipeline.engine.embedder import Engine
from pipeline.errors import RetryableError
from pipeline.runtime.metrics import WorkerMetrics
from schemas.options import EncodeOptions
from tests.corpus import documents, mixed_texts


def test_oom_splits_the_batch_and_keeps_every_document(tiny, monkeypatch):
    docs = documents(mixed_texts())
    options = EncodeOptions(max_length=512, batch_tokens=100_000)
    unsplit = Engine(tiny, options).encode(docs)
    expected = unsplit.table

    real_forward = encoder.forward_batch
    sizes: list[int] = []

    def forward_with_small_memory(model, sequences, rows, modes, storage):
        if len(sequences) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        sizes.append(len(sequences))
        return real_forward(model, sequences, rows, modes, storage)

    monkeypatch.setattr("pipeline.engine.embedder.forward_batch", forward_with_small_memory)
    result = Engine(tiny, options).encode(docs)
    assert max(sizes) <= 2 and sum(sizes) == len(docs)
    splits = len(sizes) - unsplit.stats.batches  # each split makes one batch two
    assert splits > 0 and result.stats.oom_splits == splits
    metrics = WorkerMetrics()
    metrics.shard_done(result.stats, "default")
    assert metrics.registry.get_sample_value("m3pipe_oom_splits_total") == splits
    assert result.table.column("id").to_pylist() == expected.column("id").to_pylist()
    for name in ("dense", "n_tokens", "sparse_indices"):
        got = result.table.column(name).to_pylist()
        want = expected.column(name).to_pylist()
        if name == "dense":
            np.testing.assert_allclose(np.array(got), np.array(want), atol=2e-3)
        else:
            assert got == want


def test_oom_on_a_single_sequence_is_retryable(tiny, monkeypatch):
    def always_oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr("pipeline.engine.embedder.forward_batch", always_oom)
    with pytest.raises(RetryableError, match="single sequence"):
        Engine(tiny, EncodeOptions(max_length=64)).encode(documents(["a b c", "d e"]))


def test_other_errors_are_not_swallowed(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr("pipeline.engine.embedder.forward_batch", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        Engine(tiny, EncodeOptions(max_length=64)).encode(documents(["a b c"]))
