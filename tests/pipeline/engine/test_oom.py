"""CUDA out-of-memory handling, simulated: no GPU runs in CI."""

import sys

import numpy as np
import pytest
import torch

from pipeline.engine import encoder
from pipeline.engine.embedder import EmbedEngine
from pipeline.errors import RetryableError
from pipeline.runtime.metrics import WorkerMetrics
from pipeline.testing.corpora import documents, mixed_texts
from schemas.options import EncodeOptions


def test_oom_splits_the_batch_and_keeps_every_document(tiny, monkeypatch):
    docs = documents(mixed_texts())
    options = EncodeOptions(max_length=512, batch_tokens=100_000)
    unsplit = EmbedEngine(tiny, options).encode(docs)
    expected = unsplit.table

    real_forward = encoder.forward_batch
    sizes: list[int] = []

    def forward_with_small_memory(model, sequences, rows, modes, storage):
        if len(sequences) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        sizes.append(len(sequences))
        return real_forward(model, sequences, rows, modes, storage)

    monkeypatch.setattr("pipeline.engine.embedder.forward_batch", forward_with_small_memory)
    result = EmbedEngine(tiny, options).encode(docs)
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
        EmbedEngine(tiny, EncodeOptions(max_length=64)).encode(documents(["a b c", "d e"]))


def test_other_errors_are_not_swallowed(tiny, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr("pipeline.engine.embedder.forward_batch", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        EmbedEngine(tiny, EncodeOptions(max_length=64)).encode(documents(["a b c"]))


def test_an_oom_lowers_the_budget_so_the_next_shards_fit(tiny, monkeypatch):
    """Issue 29, item 4: nothing remembered a failure, so every later batch of that size
    failed and split again. Now the engine's budget drops below what failed."""
    real_forward = encoder.forward_batch
    limit = 600  # padded tokens that "fit on the device"
    failures: list[int] = []

    def forward_with_a_memory_limit(model, sequences, rows, modes, storage):
        padded = len(sequences) * max(len(s) for s in sequences)
        if padded > limit:
            failures.append(padded)
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_forward(model, sequences, rows, modes, storage)

    monkeypatch.setattr("pipeline.engine.embedder.forward_batch", forward_with_a_memory_limit)
    engine = EmbedEngine(tiny, EncodeOptions(max_length=64, batch_tokens=4096))
    docs = documents(["word " * 40] * 40)
    engine.encode(docs)
    assert failures and engine.batch_tokens <= limit
    failures.clear()
    again = engine.encode(docs)  # the next shard: planned to fit, no failure
    assert failures == [] and again.stats.oom_splits == 0
    assert again.table.num_rows == 40


def test_the_cache_is_emptied_after_the_failed_pass_is_released(monkeypatch):
    seen = []

    def run(rows):
        if len(rows) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return rows

    def empty_cache():  # the failed pass's traceback (and its tensors) no longer held
        seen.append(sys.exc_info()[0])

    pieces = encoder.encode_with_split(run, np.arange(4), empty_cache)
    assert len(pieces) == 4 and seen and all(kind is None for kind in seen)


def test_the_cuda_budget_follows_free_memory():
    from pipeline.engine.batching import (
        CUDA_BUDGET_BOUNDS,
        DeviceMemory,
        budget_after_oom,
        cuda_batch_tokens,
        default_batch_tokens,
    )

    gib = 1 << 30
    low, high = CUDA_BUDGET_BOUNDS
    assert cuda_batch_tokens(1 * gib) == low  # a small or busy card: the floor
    assert cuda_batch_tokens(140 * gib) == high  # an H200: the ceiling
    middle = cuda_batch_tokens(16 * gib)
    assert low < middle < high and middle % 1024 == 0
    assert default_batch_tokens("cuda", memory=DeviceMemory(16 * gib, 80 * gib)) == middle
    assert default_batch_tokens("cuda") == 65536  # memory unknown: the fixed figure
    assert default_batch_tokens("cpu", memory=DeviceMemory(gib, gib)) == 16384
    lengths = np.array([100, 100, 50])
    assert budget_after_oom(65536, np.array([0, 1]), lengths) == 512  # never below one 512
    assert budget_after_oom(65536, np.array([0, 1, 2]), np.array([4096] * 3)) == 6144
