import numpy as np
import pytest

from pipeline.engine.batching import padding_efficiency, plan_batches
from pipeline.engine.embedder import EmbedEngine
from pipeline.testing.corpora import documents, mixed_texts
from schemas.options import EncodeOptions


def _lognormal_lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(5.0, 1.1, n).astype(np.int64), 3, 8192)


@pytest.mark.parametrize("budget", [512, 4096, 16384, 65536])
def test_every_batch_within_budget_and_every_index_once(budget):
    lengths = _lognormal_lengths(3000)
    batches = plan_batches(lengths, budget)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * int(lengths[batch].max())
        assert padded <= budget or len(batch) == 1


def test_sequence_longer_than_budget_runs_alone():
    lengths = np.array([10, 9000, 12, 11])
    batches = plan_batches(lengths, budget=1000)
    assert [b.tolist() for b in batches if 1 in b] == [[1]]
    assert sum(len(b) for b in batches) == 4


def test_batches_are_length_sorted_and_padding_is_low():
    lengths = _lognormal_lengths(5000, seed=1)
    batches = plan_batches(lengths, 16384)
    firsts = [int(lengths[b].max()) for b in batches]
    assert firsts == sorted(firsts, reverse=True)
    assert padding_efficiency(lengths, batches) >= 0.95


def test_not_a_fixed_count():
    short, long = np.full(400, 20), np.full(4, 4000)
    batches = plan_batches(np.concatenate([long, short]), 16384)
    sizes = sorted(len(b) for b in batches)
    assert sizes[0] <= 4 and sizes[-1] >= 400  # long ones few per batch, short ones many


def test_empty_and_invalid():
    assert plan_batches(np.array([], dtype=np.int64), 100) == []
    with pytest.raises(ValueError):
        plan_batches(np.array([5]), 0)


def test_engine_restores_input_order_with_many_batches(tiny):
    texts = mixed_texts() * 3
    docs = documents(texts)
    small_budget = EmbedEngine(tiny, EncodeOptions(max_length=512, batch_tokens=600)).encode(docs)
    one_batch = EmbedEngine(tiny, EncodeOptions(max_length=512, batch_tokens=10**6)).encode(docs)
    assert small_budget.stats.batches > 5 and one_batch.stats.batches == 1
    assert small_budget.table.column("id").to_pylist() == [d.id for d in docs]
    assert (
        small_budget.table.column("n_tokens").to_pylist()
        == one_batch.table.column("n_tokens").to_pylist()
    )
    a = small_budget.table.column("dense").combine_chunks().flatten().to_numpy()
    b = one_batch.table.column("dense").combine_chunks().flatten().to_numpy()
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)
