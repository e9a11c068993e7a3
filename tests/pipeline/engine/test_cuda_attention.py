"""Variable-length attention for padded CUDA batches (pipeline/engine/cuda_attention.py),
run on a CPU with a stand-in for torch's flash `varlen_attn`: the packing, the outputs
SDPA gives at every real position, one packing per forward pass, and engine tables equal
to SDPA's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.engine import cuda_attention
from pipeline.engine.embedder import EmbedEngine
from pipeline.engine.model import load_model
from schemas.document import Document
from schemas.options import EncodeOptions
from schemas.vector_layout import colbert_vectors


class PerSequence:
    """What varlen_attn computes, one sequence at a time with SDPA; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None):
        self.calls += 1
        assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32
        lengths = (cu_q[1:] - cu_q[:-1]).tolist()
        assert max_q == max_k == max(lengths)
        out = []
        for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
            a, b, c = (x[start:end].transpose(0, 1) for x in (q, k, v))  # [H, n, D]
            out.append(F.scaled_dot_product_attention(a, b, c, scale=scale).transpose(0, 1))
        return torch.cat(out)


def padded_batch(lengths: list[int], width: int, heads: int = 3, dim: int = 8):
    torch.manual_seed(0)
    q, k, v = (torch.randn(len(lengths), heads, width, dim) for _ in range(3))
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for row, n in enumerate(lengths):
        mask[row, :n] = True
    return q, k, v, mask


def test_a_padded_batch_gets_what_masked_sdpa_gives_at_every_real_position():
    lengths = [37, 30, 5, 1]
    q, k, v, mask = padded_batch(lengths, 37)
    kernel = PerSequence()
    out, weights = cuda_attention.varlen_attention(q, k, v, mask, None, kernel, True)
    assert weights is None and out.shape == (4, 37, 3, 8)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    expected = expected.transpose(1, 2)
    for row, n in enumerate(lengths):
        assert torch.allclose(out[row, :n], expected[row, :n], atol=1e-6)
        assert not out[row, n:].any()  # padded rows are zeros; no output reads them
    assert kernel.calls == 1


def test_the_packing_is_computed_once_per_mask_object():
    _, _, _, mask = padded_batch([4, 2], 4)
    first = cuda_attention.packing(mask)
    assert first.positions.tolist() == [0, 1, 2, 3, 4, 5]
    assert first.offsets.tolist() == [0, 4, 6] and first.longest == 4
    assert cuda_attention.packing(mask) is first  # the next layer of the same pass
    assert cuda_attention.packing(mask.clone()) is not first  # the next pass


def test_unpadded_batches_and_a_kernel_without_scale_go_to_sdpa_without_a_mask():
    q, k, v, _ = padded_batch([6, 6], 6)
    kernel = PerSequence()
    out, _ = cuda_attention.varlen_attention(q, k, v, None, None, kernel, True)
    expected = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-6) and kernel.calls == 0
    # A torch whose varlen_attn takes no scale still gets it for the default scale...
    q, k, v, mask = padded_batch([6, 3], 6)
    cuda_attention.varlen_attention(q, k, v, mask, 8**-0.5, kernel, False)
    assert kernel.calls == 1
    # ...and SDPA (masked) for any other.
    out, _ = cuda_attention.varlen_attention(q, k, v, mask, 0.5, kernel, False)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :], scale=0.5)
    assert kernel.calls == 1 and torch.allclose(out, expected.transpose(1, 2), atol=1e-6)


def test_it_is_wanted_on_cuda_only_and_can_be_turned_off(monkeypatch):
    kernel = PerSequence()
    assert cuda_attention.wanted(torch.device("cuda", 0), kernel)
    assert not cuda_attention.wanted(torch.device("cpu"), kernel)
    monkeypatch.setenv(cuda_attention.ENV, "sdpa")
    assert not cuda_attention.wanted(torch.device("cuda", 0), kernel)


@pytest.mark.slow
def test_an_engine_with_it_writes_the_tables_sdpa_gives(model_cache, monkeypatch):
    """Mixed lengths in fp32, so batches are padded: every output as with SDPA."""
    monkeypatch.setenv("M3PIPE_CPU_ATTENTION", "sdpa")
    rng = np.random.default_rng(1)
    words = ["shard", "vector", "queue", "token", "sparse", "index", "dense"]
    docs = [
        Document(id=str(i), text=" ".join(rng.choice(words, size=int(n))))
        for i, n in enumerate(rng.integers(3, 120, size=12))
    ]
    # A budget that packs several lengths into a batch: padded batches.
    options = EncodeOptions(batch_tokens=2000, dtype="float32")

    def table(kernel: PerSequence | None):
        model = load_model("random:tiny", device="cpu", precision="fp32", cache_dir=model_cache)
        if kernel is not None:
            cuda_attention.install(model.encoder, kernel)
        [(_, result)] = EmbedEngine(model, options).encode_stream([docs])
        return result.table

    def dense(table) -> np.ndarray:
        return np.array(table.column("dense").to_pylist())

    kernel = PerSequence()
    varlen, sdpa = table(kernel), table(None)
    assert kernel.calls >= 2  # two layers, padded batches
    assert varlen.column("id").to_pylist() == sdpa.column("id").to_pylist()
    assert np.allclose(dense(varlen), dense(sdpa), atol=1e-5)
    (offsets, a), (same, b) = (
        colbert_vectors(t.column("colbert"), t.schema.field("colbert")) for t in (varlen, sdpa)
    )
    assert np.array_equal(offsets, same) and np.allclose(a, b, atol=1e-5)
    assert varlen.column("sparse_indices").equals(sdpa.column("sparse_indices"))
    assert np.allclose(
        varlen.column("sparse_values").combine_chunks().flatten().to_numpy(),
        sdpa.column("sparse_values").combine_chunks().flatten().to_numpy(),
        atol=1e-5,
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_varlen_attn_matches_masked_sdpa_on_cuda():
    from torch.nn.attention.varlen import varlen_attn

    lengths = [200, 130, 7]
    q, k, v, mask = (x.cuda() for x in padded_batch(lengths, 200, heads=4, dim=64))
    q, k, v = (x.half() for x in (q, k, v))
    out, _ = cuda_attention.varlen_attention(q, k, v, mask, None, varlen_attn, True)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    for row, n in enumerate(lengths):
        assert torch.allclose(out[row, :n], expected.transpose(1, 2)[row, :n], atol=2e-3)
