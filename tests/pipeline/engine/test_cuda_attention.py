"""Variable-length attention for padded CUDA batches (pipeline/engine/cuda_attention.py),
run on a CPU with a stand-in for torch's flash `varlen_attn`: the packing, the outputs
SDPA gives at every real position, one packing per forward pass, the packing from the
host's lengths, a padded batch launched without a read of the device, and engine tables
equal to SDPA's."""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from pipeline.engine import cuda_attention, device_forms
from pipeline.engine.embedder import EmbedEngine
from pipeline.engine.encoder import attention_kwargs, forward_batch, pad_batch, row_lengths
from pipeline.engine.model import load_model
from pipeline.engine.reranker import RerankEngine, load_reranker
from schemas.document import Document
from schemas.options import STORAGE_PRESETS, EncodeOptions, StoragePreset
from schemas.pair import RerankOptions
from schemas.vector_layout import colbert_vectors


class HostReads(TorchFunctionMode):
    """Records every torch call that reads a tensor's values back to the host: on CUDA each
    waits for the device to finish all it was given before (a host sync). Paused while
    `paused` is set (the stand-in kernel's own reads are not the engine's)."""

    READS = frozenset(
        {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy",
         "nonzero", "argwhere", "unique", "masked_select", "equal", "allclose",
         "tensor"}  # torch.tensor(host data, device=...): a copy that waits on CUDA
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.paused = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in self.READS and not self.paused:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


class PerSequence:
    """What varlen_attn computes, one sequence at a time with SDPA; counts its calls."""

    def __init__(self, reads: HostReads | None = None) -> None:
        self.calls = 0
        self.reads = reads

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.reads is None:
            return self._attend(*args, **kwargs)
        self.reads.paused = True
        try:
            return self._attend(*args, **kwargs)
        finally:
            self.reads.paused = False

    def _attend(self, q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None):
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


@given(st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_the_packing_from_the_hosts_lengths_is_the_masks(lengths):
    _, _, _, mask = padded_batch(lengths, max(lengths), heads=1, dim=1)
    positions, offsets, longest = cuda_attention.host_packing(np.array(lengths))
    from_mask = cuda_attention.packing(mask)
    assert positions.tolist() == from_mask.positions.tolist()
    assert offsets.dtype == np.int32 and offsets.tolist() == from_mask.offsets.tolist()
    assert longest == from_mask.longest


def launched_without_reads(module: torch.nn.Module, sequences: list[list[int]], run) -> None:
    """`run(ids, mask, attention)` launches a padded batch with the varlen attention: it
    reads nothing back from the device, and the stand-in kernel ran in every layer."""
    reads = HostReads()
    kernel = PerSequence(reads)
    cuda_attention.install(module, kernel)
    ids, mask = pad_batch(sequences, 1, torch.device("cpu"))
    with reads, torch.inference_mode():
        run(ids, mask, attention_kwargs(module, row_lengths(sequences), torch.device("cpu")))
    assert reads.seen == []
    assert kernel.calls == module.config.num_hidden_layers


@pytest.mark.parametrize("storage", list(StoragePreset))
def test_launching_a_padded_batch_reads_nothing_back_from_the_device(
    model_cache, storage, monkeypatch
):
    """The engine's launch of a batch (encoder, heads, sparse pooling, stored forms, the
    copies out) never waits for the device: on CUDA the host goes on to place the previous
    batch while this one computes. Here on a CPU, every read of a tensor's values counts;
    sign bits are packed as on a GPU (on a CPU numpy packs them)."""
    monkeypatch.setattr(device_forms, "sign_bits", device_forms.packed_by_sum)
    model = load_model("random:tiny", device="cpu", precision="fp32", cache_dir=model_cache)
    engine = EmbedEngine(model, EncodeOptions(dtype="float32", **STORAGE_PRESETS[storage]))
    assert model.unused_ids_on_device.numel()  # copied to the device once, at the first batch
    sequences = [[0, *range(5, 5 + n), 2] for n in (30, 12, 3)]

    def launch(ids, mask, attention) -> None:
        batch = forward_batch(
            model, sequences, np.arange(3), engine.options.modes, engine.device_forms
        )
        assert "colbert" in batch.host

    launched_without_reads(model.encoder, sequences, launch)


def test_launching_a_padded_rerank_batch_reads_nothing_back_from_the_device(model_cache):
    """The reranker's launch (padding, the model, its logits' copy out): the engine reads
    them only once the next batch is launched."""
    reranker = load_reranker("random:tiny", device="cpu", precision="fp32", cache_dir=model_cache)
    engine = RerankEngine(reranker, RerankOptions())
    sequences = [[0, *range(5, 5 + n), 2] for n in (20, 4)]

    def launch(ids, mask, attention) -> None:
        host, done = engine._forward(sequences)
        assert host.shape == (2,) and done is None  # no event on a CPU

    launched_without_reads(reranker.model, sequences, launch)


def test_a_model_whose_forward_takes_no_keywords_gets_no_packing():
    """Its attention computes the packing from the mask (one host sync) instead."""

    class Fixed(torch.nn.Module):
        config = types.SimpleNamespace(_attn_implementation=cuda_attention.NAME)

        def forward(self, input_ids, attention_mask=None, return_dict=True):
            raise AssertionError("not run")

    class Handing(Fixed):
        def forward(self, input_ids, attention_mask=None, return_dict=True, **kwargs):
            raise AssertionError("not run")

    cpu, lengths = torch.device("cpu"), row_lengths([[1, 2, 3], [1]])
    assert attention_kwargs(Fixed(), lengths, cpu) == {}
    [packing] = attention_kwargs(Handing(), lengths, cpu).values()
    assert packing.offsets.tolist() == [0, 3, 4] and packing.longest == 3
    Handing.config = types.SimpleNamespace(_attn_implementation="sdpa")
    assert attention_kwargs(Handing(), lengths, cpu) == {}


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("storage", list(StoragePreset))
def test_launching_a_padded_batch_on_cuda_does_not_synchronize(model_cache, storage):
    """What the CPU test above checks op by op, on the device itself: torch raises on any
    operation that synchronizes with the device while a padded batch is launched (after a
    first batch: the kernels' first use, the pinned pools, the copies made once)."""
    model = load_model("random:tiny", device="cuda", precision="fp16", cache_dir=model_cache)
    assert cuda_attention.takes_packing(model.encoder)
    engine = EmbedEngine(model, EncodeOptions(**STORAGE_PRESETS[storage]))
    sequences = [[0, *range(5, 5 + n), 2] for n in (300, 120, 7)]

    def launch():
        return forward_batch(
            model, sequences, np.arange(3), engine.options.modes, engine.device_forms
        )

    first = launch().result()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending = launch()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    again = pending.result()
    assert np.array_equal(again.sparse_indices, first.sparse_indices)
    assert np.array_equal(again.colbert, first.colbert)
