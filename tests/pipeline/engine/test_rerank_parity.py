"""The reranker engine against FlagEmbedding's FlagReranker on the same random weights."""

import numpy as np
import pytest

from pipeline.engine.reranker import RerankEngine, load_reranker, tokenize_pairs
from pipeline.testing.corpora import mixed_texts
from schemas.pair import Pair, RerankOptions


@pytest.fixture(scope="module")
def reranker(model_cache):
    return load_reranker("random:tiny", device="cpu", precision="fp32", cache_dir=model_cache)


def make_pairs() -> list[Pair]:
    texts = mixed_texts()
    long_text = " ".join(texts) * 3  # far past any max_length below
    queries = ["what is m3pipe?", texts[1], long_text[:3000], "ünïcödé ☃ query \u2028 x"]
    passages = [*texts, long_text, "short", "tabs\tand\nnew lines  here", "emoji 🚀🚀 ok"]
    return [
        Pair(query_id=f"q{i}", query=q, doc_id=f"d{j}", passage=p)
        for i, q in enumerate(queries)
        for j, p in enumerate(passages)
    ]


@pytest.mark.parametrize("max_length,query_max_length", [(512, None), (64, None), (128, 20)])
def test_pair_ids_are_flagembeddings(reranker, max_length, query_max_length):
    from FlagEmbedding.utils.tokenizer_compat import prepare_for_model_compat

    tok = reranker.tokenizer
    pairs = make_pairs()
    options = RerankOptions(max_length=max_length, query_max_length=query_max_length)
    qml = query_max_length or max_length * 3 // 4
    expected = []
    for pair in pairs:  # FlagReranker's own steps, one pair at a time
        q = tok(pair.query, add_special_tokens=False, max_length=qml, truncation=True)
        d = tok(pair.passage, add_special_tokens=False, max_length=max_length, truncation=True)
        item = prepare_for_model_compat(
            tok,
            q["input_ids"],
            d["input_ids"],
            truncation="only_second",
            max_length=max_length,
            padding=False,
        )
        expected.append(item["input_ids"])
    got = tokenize_pairs(tok, pairs, options)
    assert got == expected
    assert max(len(ids) for ids in got) == max_length  # truncation did happen


# 512 in the full suite only (the slow tier): 96 checks the same code in the fast one.
@pytest.mark.parametrize("max_length", [pytest.param(512, marks=pytest.mark.slow), 96])
def test_scores_match_flagreranker_compute_score(reranker, max_length):
    from FlagEmbedding import FlagReranker

    pairs = make_pairs()
    flag = FlagReranker(str(reranker.path), use_fp16=False, devices=["cpu"])
    as_lists = [[p.query, p.passage] for p in pairs]
    expected = np.array(flag.compute_score(as_lists, max_length=max_length))
    expected_norm = np.array(flag.compute_score(as_lists, max_length=max_length, normalize=True))

    # A small token budget: many batches, some of one pair, unlike FlagReranker's.
    engine = RerankEngine(reranker, RerankOptions(max_length=max_length, batch_tokens=2048))
    result = engine.score(pairs)
    assert result.stats.batches > 3
    # fp32 logits near 5 computed in other batch shapes (other GEMM blockings): observed
    # differences reach 1.05e-5 absolute, 2e-6 relative, so the bound is relative too.
    tol = {"rtol": 1e-5, "atol": 1e-5}
    np.testing.assert_allclose(result.logits, expected, **tol)
    table = result.table
    np.testing.assert_allclose(table.column("score").to_numpy(), expected, **tol)
    np.testing.assert_allclose(table.column("score_normalized").to_numpy(), expected_norm, **tol)
    assert np.std(expected) > 0.02  # scores differ far beyond the tolerance (~6e-5 here)


def test_out_of_memory_splits_a_rerank_batch_and_scores_every_pair(reranker, monkeypatch):
    import torch

    from pipeline.errors import RetryableError

    pairs = make_pairs()
    options = RerankOptions(max_length=128, batch_tokens=100_000)  # one batch, unless split
    unsplit = RerankEngine(reranker, options).score(pairs)
    expected = unsplit.logits
    real_forward = RerankEngine._forward
    sizes: list[int] = []

    def forward_with_small_memory(self, sequences):
        if len(sequences) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        sizes.append(len(sequences))
        return real_forward(self, sequences)

    monkeypatch.setattr(RerankEngine, "_forward", forward_with_small_memory)
    result = RerankEngine(reranker, options).score(pairs)
    assert max(sizes) <= 3 and sum(sizes) == len(pairs)
    assert result.stats.oom_splits == len(sizes) - unsplit.stats.batches > 0
    np.testing.assert_allclose(result.logits, expected, atol=1e-5)
    assert result.stats.batches == len(sizes)

    def always_oom(self, sequences):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(RerankEngine, "_forward", always_oom)
    with pytest.raises(RetryableError, match="single sequence"):
        RerankEngine(reranker, options).score(pairs[:2])


def test_the_next_batch_is_launched_before_this_ones_logits_are_read(reranker, monkeypatch):
    """One batch in flight while the host reads the last one's logits: the same scores as
    the batches one at a time."""
    from pipeline.engine.reranker import ScoredBatch

    pairs = make_pairs()
    options = RerankOptions(max_length=128, batch_tokens=64)  # a few pairs a batch
    alone = RerankEngine(reranker, options).score(pairs)
    events: list[str] = []
    launch, read = RerankEngine._forward, ScoredBatch.logits

    def launching(self, sequences):
        events.append("launch")
        return launch(self, sequences)

    def reading(self):
        events.append("read")
        return read(self)

    monkeypatch.setattr(RerankEngine, "_forward", launching)
    monkeypatch.setattr(ScoredBatch, "logits", reading)
    result = RerankEngine(reranker, options).score(pairs)
    batches = result.stats.batches
    assert batches >= 3
    assert events == ["launch"] + ["launch", "read"] * (batches - 1) + ["read"]
    # Not bit for bit: CPU matmuls may split their sums differently from one call to the next
    # on a loaded machine (a CI run saw 3 float32 ulps on one of 64 logits).
    np.testing.assert_allclose(result.logits, alone.logits, rtol=1e-6)
