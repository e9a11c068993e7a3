"""benchmarks/bench_output_bytes.py on a few documents: each storage's bytes are what its
layout says (the figures docs/scale.md extrapolates to 10^9 documents)."""

from __future__ import annotations

import pytest

from benchmarks.bench_output_bytes import STORAGES, documents, measure


@pytest.mark.slow
def test_each_storages_bytes_are_its_layouts(tmp_path, model_cache):
    from pipeline.engine.model import load_model

    model = load_model("stub:full", device="cpu", precision="fp32", cache_dir=model_cache)
    docs = documents(4, 64)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    exact = measure(model, docs, 64, STORAGES["exact float16 (default)"], tmp_path / "a")
    compact = measure(model, docs, 64, STORAGES["compact (int8 dense + binary colbert)"],
                      tmp_path / "b")  # fmt: skip
    assert exact["tokens_per_document"] == compact["tokens_per_document"] == 64
    # ColBERT: 63 vectors of 2,048 bytes (float16) against 128 bytes (sign bits) a document.
    assert exact["bytes_per_document"] > 63 * 2048
    assert 63 * 128 < compact["bytes_per_document"] < exact["bytes_per_document"] / 8
    assert exact["tb_at_1e9_documents"] == pytest.approx(exact["bytes_per_document"] / 1e3, 0.01)
