"""benchmarks/proxy_model.py: BERT weights become an XLM-RoBERTa model that computes the same
hidden states, and m3pipe's engine runs it (on a random BERT here: the trained one is a
download, run by the studies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.proxy_model import bert_to_xlmr, fit_sparse_head

WORDS = [
    "the",
    "river",
    "runs",
    "north",
    "past",
    "old",
    "mill",
    "stone",
    "bridge",
    "town",
    "##s",
    "##ing",
    "a",
    "cold",
    "wind",
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    directory = tmp_path_factory.mktemp("bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(directory / "vocab.txt")).save_pretrained(directory)  # the vocab file
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=24,
        pad_token_id=0,
    )
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


TEXTS = ["the river runs north past the old mill", "a cold wind", "stone bridges"]


def test_the_converted_model_computes_berts_hidden_states(bert_dir, tmp_path):
    from transformers import AutoTokenizer, BertModel, XLMRobertaModel

    out = bert_to_xlmr(bert_dir, tmp_path / "xlmr")
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0] == tokenizer.cls_token_id  # [CLS] ... [SEP] as before
    with torch.inference_mode():
        want = BertModel.from_pretrained(bert_dir).eval()(**batch).last_hidden_state
        got = (
            XLMRobertaModel.from_pretrained(out)
            .eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            .last_hidden_state
        )
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)


def test_the_engine_runs_it_and_a_fitted_sparse_head_weighs_rare_terms_up(
    bert_dir, tmp_path, model_cache
):
    from pipeline.engine.embedder import EmbedEngine
    from pipeline.engine.model import load_model
    from pipeline.testing.corpora import documents
    from schemas.options import EncodeOptions

    out = bert_to_xlmr(bert_dir, tmp_path / "xlmr")
    corpus = TEXTS * 3 + ["the mill", "the town", "the bridge"]
    fitted = fit_sparse_head(out, corpus, tmp_path / "fitted")
    model = load_model(str(fitted), device="cpu", precision="fp32", cache_dir=model_cache)
    table = EmbedEngine(model, EncodeOptions(max_length=24)).encode(documents(corpus)).table
    dense = table.column("dense").combine_chunks().flatten().to_numpy().reshape(len(corpus), -1)
    np.testing.assert_allclose(np.linalg.norm(dense, axis=1), 1.0, atol=1e-5)
    weights = {}
    for indices, values in zip(
        table.column("sparse_indices").to_pylist(),
        table.column("sparse_values").to_pylist(),
        strict=True,
    ):
        for index, value in zip(indices, values, strict=True):
            weights.setdefault(index, []).append(value)
    vocab = model.tokenizer.get_vocab()
    # "the" is in every text; "cold" in 3 of 12: the fitted head weighs it higher.
    assert np.mean(weights.get(vocab["the"], [0.0])) < np.mean(weights[vocab["cold"]])
