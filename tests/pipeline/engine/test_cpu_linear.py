"""fp32 Linear layers through oneDNN (pipeline/engine/cpu_linear.py): chosen where they
should be, the same linear as PyTorch's, and an encoder that agrees with MKL's to the fp32
parity bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.engine import cpu_linear
from pipeline.engine.agreement import table_outputs
from pipeline.engine.embedder import EmbedEngine
from pipeline.engine.model import load_model
from pipeline.engine.reranker import load_reranker
from pipeline.testing.corpora import documents, mixed_texts
from schemas.options import EncodeOptions

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="no oneDNN linear op")


@pytest.mark.parametrize("shape", [(5, 32), (2, 7, 32), (0, 32)])
@pytest.mark.parametrize("bias", [True, False])
def test_the_onednn_linear_is_pytorchs_linear(shape, bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 24, bias=bias)
    x = torch.randn(*shape)
    expected = F.linear(x, layer.weight, layer.bias)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    assert cpu_linear.install(torch.nn.Sequential(layer)) == 1
    assert isinstance(layer, cpu_linear.OneDNNLinear)
    with torch.inference_mode():
        out = layer(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in state.items())


def test_a_wrong_or_missing_op_is_not_used(monkeypatch):
    def wrong(x, weight, bias):
        return F.linear(x, weight, bias) + 1

    def missing(x, weight, bias):
        raise AttributeError("no such op")

    try:
        for broken in (wrong, missing):
            monkeypatch.setattr(cpu_linear, "linear", broken)
            cpu_linear.available.cache_clear()
            assert not cpu_linear.available()
        monkeypatch.undo()
        for _ in range(100):  # the same answer every time: its check has no random inputs
            cpu_linear.available.cache_clear()
            assert cpu_linear.available()
    finally:
        cpu_linear.available.cache_clear()


def test_fp32_on_cpu_gets_it_unless_the_cpu_is_intel_or_told_otherwise(monkeypatch):
    monkeypatch.delenv(cpu_linear.ENV, raising=False)
    monkeypatch.setattr(cpu_linear, "_cpu_vendor", lambda: "AuthenticAMD")
    assert cpu_linear.wanted(CPU, torch.float32)
    assert not cpu_linear.wanted(CPU, torch.bfloat16)  # bf16 already runs through oneDNN
    assert not cpu_linear.wanted(torch.device("cuda"), torch.float32)
    monkeypatch.setenv(cpu_linear.ENV, "mkl")
    assert not cpu_linear.wanted(CPU, torch.float32)
    monkeypatch.setattr(cpu_linear, "_cpu_vendor", lambda: "GenuineIntel")
    monkeypatch.delenv(cpu_linear.ENV)
    assert not cpu_linear.wanted(CPU, torch.float32)  # MKL's fast kernels run there
    monkeypatch.setenv(cpu_linear.ENV, "onednn")
    assert cpu_linear.wanted(CPU, torch.float32)


@pytest.mark.slow
def test_models_loaded_in_fp32_run_every_linear_through_it(model_cache, monkeypatch):
    monkeypatch.setenv(cpu_linear.ENV, "onednn")

    def kinds(model: torch.nn.Module) -> set[type]:
        return {type(m) for m in model.modules() if isinstance(m, torch.nn.Linear)}

    model = load_model("random:tiny", device="cpu", precision="fp32", cache_dir=model_cache)
    for part in (model.encoder, model.colbert_linear, model.sparse_linear):
        assert kinds(part) == {cpu_linear.OneDNNLinear}
    reranker = load_reranker("random:tiny", device="cpu", precision="fp32", cache_dir=model_cache)
    assert kinds(reranker.model) == {cpu_linear.OneDNNLinear}
    bf16 = load_model("random:tiny", device="cpu", precision="bf16", cache_dir=model_cache)
    assert kinds(bf16.encoder) == {torch.nn.Linear}


@pytest.mark.slow
def test_the_encoder_agrees_with_mkls_within_the_fp32_parity_bound(model_cache, monkeypatch):
    """Whatever this machine's vendor: oneDNN against MKL on the parity corpus, every output
    to the 1e-5 that holds the engine to FlagEmbedding (tests/pipeline/engine/test_parity.py)."""

    def encode(choice: str) -> tuple:
        monkeypatch.setenv(cpu_linear.ENV, choice)
        model = load_model("random:tiny", device="cpu", precision="fp32", cache_dir=model_cache)
        options = EncodeOptions(max_length=4096, batch_tokens=6000, dtype="float32")
        return table_outputs(EmbedEngine(model, options).encode(documents(mixed_texts())).table)

    (dense, colbert, sparse), (mkl_dense, mkl_colbert, mkl_sparse) = encode("onednn"), encode("mkl")
    np.testing.assert_allclose(dense, mkl_dense, atol=1e-5, rtol=0)
    for mine, theirs in zip(colbert, mkl_colbert, strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-5, rtol=0)
    for mine, theirs in zip(sparse, mkl_sparse, strict=True):
        assert mine.keys() == theirs.keys()
        np.testing.assert_allclose(list(mine.values()), list(theirs.values()), atol=1e-5, rtol=0)
