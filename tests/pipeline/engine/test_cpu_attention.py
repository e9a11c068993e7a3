"""The fused bf16 attention on CPU (pipeline/engine/cpu_attention.py): installed where it
should be, the outputs SDPA gives on padded and unpadded batches, and SDPA again for shapes
past its bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.integrations import sdpa_attention

from pipeline.engine import cpu_attention, cpu_linear
from pipeline.engine.embedder import EmbedEngine
from pipeline.engine.model import load_model
from pipeline.engine.reranker import load_reranker
from schemas.document import Document
from schemas.options import EncodeOptions

BF16 = torch.bfloat16


def reference(q, k, v, mask):
    """SDPA in fp32 on the same bf16 inputs."""
    return F.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=None if mask is None else mask
    ).transpose(1, 2)


@pytest.mark.parametrize("padded", [True, False])
def test_the_fused_kernel_computes_attention_with_and_without_a_padding_mask(padded, monkeypatch):
    monkeypatch.setattr(cpu_attention, "_shapes", set())
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 37, 16, dtype=BF16) for _ in range(3))
    mask = None
    if padded:  # rows 1 and 2 are padded after 30 and 5 tokens, as an encoder pads them
        keep = torch.ones(3, 37, dtype=torch.bool)
        keep[1, 30:], keep[2, 5:] = False, False
        mask = keep[:, None, None, :].expand(3, 1, 37, 37)
    out, weights = cpu_attention.fused_attention_forward(torch.nn.Module(), q, k, v, mask)
    assert weights is None and out.shape == (3, 37, 4, 16) and out.dtype == BF16
    expected = reference(q, k, v, mask)
    assert torch.allclose(out.float(), expected, atol=3e-2), (out.float() - expected).abs().max()
    # An unpadded batch gets the kernel without a mask (faster), a padded one the masked.
    assert [shape[-1] for shape in cpu_attention._shapes] == [padded]


def test_bf16_on_cpu_gets_it_and_nothing_else_does(model_cache, monkeypatch):
    def attention(precision: str) -> str:
        model = load_model("random:tiny", device="cpu", precision=precision, cache_dir=model_cache)
        return str(model.encoder.config._attn_implementation)

    assert attention("bf16") == cpu_attention.NAME
    # fp32 gets it where its linears run through oneDNN (cpu_linear), and only there.
    monkeypatch.setenv(cpu_linear.ENV, "mkl")
    assert attention("fp32") == "sdpa"
    monkeypatch.setenv(cpu_linear.ENV, "onednn")
    assert attention("fp32") == cpu_attention.NAME
    reranker = load_reranker("random:tiny", device="cpu", precision="bf16", cache_dir=model_cache)
    assert reranker.model.config._attn_implementation == cpu_attention.NAME
    monkeypatch.setenv(cpu_attention.ENV, "sdpa")
    assert attention("bf16") == "sdpa"


def test_an_engine_with_it_embeds_as_with_sdpa(model_cache, monkeypatch):
    """Mixed lengths, so batches are padded: dense vectors as SDPA's, to bf16's precision."""
    rng = np.random.default_rng(0)
    words = ["shard", "vector", "queue", "token", "sparse", "index", "dense"]
    docs = [
        Document(id=str(i), text=" ".join(rng.choice(words, size=int(n))))
        for i, n in enumerate(rng.integers(3, 120, size=12))
    ]
    options = EncodeOptions(batch_tokens=400, dtype="float32")

    def dense(attention: str) -> np.ndarray:
        monkeypatch.setenv(cpu_attention.ENV, attention)
        model = load_model("random:tiny", device="cpu", precision="bf16", cache_dir=model_cache)
        assert (model.encoder.config._attn_implementation == cpu_attention.NAME) is (
            attention == "onednn"
        )
        [(_, result)] = EmbedEngine(model, options).encode_stream([docs])
        return np.array(result.table.column("dense").to_pylist())

    fused, sdpa = dense("onednn"), dense("sdpa")
    cosines = (
        (fused * sdpa).sum(axis=1) / np.linalg.norm(fused, axis=1) / np.linalg.norm(sdpa, axis=1)
    )
    # Two layers 64 wide: the two kernels agree to ~1e-6 here; a wrong one (V halved) gives
    # 7e-5, which this bound catches.
    assert cosines.min() > 0.99999, cosines


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Calls that went to transformers' SDPA attention instead of the fused kernel."""
    calls: list[int] = []
    real = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(
        sdpa_attention, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    return calls


def run(length: int, batch: int = 1) -> None:
    """One call at [batch, 2 heads, length, 8], checked against fp32 SDPA."""
    module = torch.nn.Module()
    module.is_causal = False
    q, k, v = (torch.randn(batch, 2, length, 8, dtype=BF16) for _ in range(3))
    out, _ = cpu_attention.fused_attention_forward(module, q, k, v, None)
    assert torch.allclose(out.float(), reference(q, k, v, None), atol=3e-2)


def test_shapes_past_the_bound_run_sdpa(monkeypatch, sdpa_calls):
    monkeypatch.setattr(cpu_attention, "MAX_SHAPES", 1)
    monkeypatch.setattr(cpu_attention, "_shapes", set())
    for length in (8, 8, 9):
        run(length)
    assert sdpa_calls == [1]  # the first shape was compiled and reused; the second is past it


def test_a_batch_whose_scores_would_pass_the_bound_runs_in_blocks_of_queries(
    monkeypatch, sdpa_calls
):
    monkeypatch.setattr(cpu_attention, "_shapes", set())
    monkeypatch.setattr(cpu_attention, "MAX_SCORES_BYTES", 64 * 2 * 200 * 2)  # 64 rows of 200
    q, k, v = (torch.randn(1, 2, 200, 8, dtype=BF16) for _ in range(3))
    keep = torch.ones(1, 200, dtype=torch.bool)
    keep[0, 150:] = False
    mask = keep[:, None, None, :].expand(1, 1, 200, 200)
    out, _ = cpu_attention.fused_attention_forward(torch.nn.Module(), q, k, v, mask)
    assert torch.allclose(out.float(), reference(q, k, v, mask), atol=3e-2)
    assert sdpa_calls == []  # fused, in blocks of 64, 64, 64 and 8 query rows
    assert {shape[2] for shape in cpu_attention._shapes} == {64, 8}


def test_a_long_call_runs_in_blocks_of_queries_whose_scores_stay_in_cache(monkeypatch, sdpa_calls):
    """A head's scores past BLOCK_SCORES_BYTES: blocks of queries even when memory allows."""
    monkeypatch.setattr(cpu_attention, "_shapes", set())
    monkeypatch.setattr(cpu_attention, "BLOCK_SCORES_BYTES", 64 * 150 * 2)  # 64 rows of 150
    run(96)
    assert {shape[2] for shape in cpu_attention._shapes} == {96}  # 96 x 96 fits: whole
    run(150)
    assert sdpa_calls == []
    assert {shape[2] for shape in cpu_attention._shapes} == {96, 64, 22}  # 64, 64 and 22


@pytest.mark.parametrize("dtype", [BF16, torch.float32])
def test_the_first_call_at_a_shape_gives_the_bits_every_later_call_gives(monkeypatch, dtype):
    """TorchScript profiles a new shape's first call through unfused ops, which round
    differently: a document's vectors must not depend on which batch first met a shape."""
    monkeypatch.setattr(cpu_attention, "_shapes", set())
    monkeypatch.setattr(cpu_attention, "_traced", {})  # a kernel that has seen no shape
    cpu_attention.enable()
    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 4, 33, 16, dtype=dtype) for _ in range(3))
    outs = [cpu_attention.fused_attention_forward(torch.nn.Module(), q, k, v, None)[0]]
    outs += [cpu_attention.fused_attention_forward(torch.nn.Module(), q, k, v, None)[0]]
    assert torch.equal(outs[0], outs[1])
