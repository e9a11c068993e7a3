"""benchmarks/study_sparse_precision.py: each variant keeps the parts it names in fp32, and
keeping the residual stream in fp32 brings bf16's hidden states closer to fp32's."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from benchmarks.study_sparse_precision import VARIANTS, main, prepare


@pytest.mark.slow
def test_each_variant_keeps_in_fp32_what_it_names(model_cache):
    from pipeline.engine.model import load_model

    exact = load_model("random:tiny", device="cpu", precision="fp32", cache_dir=model_cache)
    loaded = load_model("random:tiny", device="cpu", precision="bf16", cache_dir=model_cache)

    def dtypes(variant: str) -> dict[str, torch.dtype]:
        model = copy.deepcopy(loaded)
        prepare(model, variant, exact)
        layer = model.encoder.encoder.layer[0]
        sources = dict(exact.encoder.named_parameters())
        for name, mine in model.encoder.named_parameters():
            source = sources[name]
            if variant == "fp32-on-bf16-weights":  # fp32 arithmetic, bf16-rounded weights
                assert torch.equal(mine, source.bfloat16().float())
            elif mine.dtype == torch.float32:  # fp32 parts get fp32 weights, not bf16 cast up
                assert torch.equal(mine, source)
        return {
            "sparse head": model.sparse_linear.weight.dtype,
            "embeddings": model.encoder.embeddings.word_embeddings.weight.dtype,
            "layer norm": layer.output.LayerNorm.weight.dtype,
            "attention": layer.attention.self.query.weight.dtype,
            "ffn": layer.intermediate.dense.weight.dtype,
        }

    bf16, fp32 = torch.bfloat16, torch.float32
    assert set(dtypes("bf16").values()) == {bf16}
    assert dtypes("bf16+fp32-head") == {
        "sparse head": fp32, "embeddings": bf16, "layer norm": bf16, "attention": bf16, "ffn": bf16
    }  # fmt: skip
    assert dtypes("bf16+fp32-residual") == {
        "sparse head": fp32, "embeddings": fp32, "layer norm": fp32, "attention": bf16, "ffn": bf16
    }  # fmt: skip
    assert dtypes("bf16+fp32-residual+ffn") == {
        "sparse head": fp32, "embeddings": fp32, "layer norm": fp32, "attention": bf16, "ffn": fp32
    }  # fmt: skip
    assert set(dtypes("fp32-on-bf16-weights").values()) == {fp32}


@pytest.mark.slow
def test_the_study_reports_every_variant_against_fp32(model_cache, tmp_path):
    out = tmp_path / "study.json"
    main(["--model", "random:tiny", "--docs", "3", "--max-length", "256", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["corpus"]["docs"] == 3 and report["corpus"]["max_tokens"] <= 256
    reference = report["reference"]
    assert 0 < reference["shared_direction_share"] <= 1 and 0 < reference["sparse_kept_share"] < 1
    variants = report["variants"]
    assert list(variants) == list(VARIANTS)
    for figures in variants.values():
        assert figures["dense_cosine_min"] > 0.999
        assert 0.9 < figures["sparse_jaccard_mean"] <= 1 and figures["seconds"] > 0
    # bf16 rounds the residual stream at every layer; the fp32 residual variants do not.
    bf16 = variants["bf16"]["hidden_relative_error_mean"]
    assert 0 < variants["bf16+fp32-residual"]["hidden_relative_error_mean"] < bf16 / 2
