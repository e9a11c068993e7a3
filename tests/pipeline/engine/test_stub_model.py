"""`stub:SIZE`, the stand-in encoder for capacity tests (issue 29, item 1): bge-m3's output
shapes, real token counts, vectors deterministic per text, always labelled a stub."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.engine.embedder import EmbedEngine
from pipeline.engine.model import load_model
from pipeline.errors import ModelLoadError
from schemas.document import Document
from schemas.options import EncodeOptions
from schemas.vector_layout import colbert_rows


@pytest.fixture(scope="module")
def stub_full(model_cache):
    return load_model("stub:full", device="cpu", precision="fp32", cache_dir=model_cache)


def test_stub_full_has_bge_m3s_output_shapes_and_says_it_is_a_stub(stub_full):
    texts = ["a short one", "a longer text " * 40, "日本語のテキスト"]
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(texts)]
    table = EmbedEngine(stub_full, EncodeOptions(max_length=64)).encode(docs).table
    assert table.schema.field("dense").type.list_size == 1024
    field = table.schema.field("colbert")
    assert field.metadata[b"m3pipe.dim"] == b"1024"
    colbert = colbert_rows(table.column("colbert"), field)
    for row, vectors in zip(table.to_pylist(), colbert, strict=True):
        assert vectors.shape == (row["n_tokens"] - 1, 1024)  # EOS kept, CLS not, as bge-m3
        assert 0 < len(row["sparse_indices"]) < row["n_tokens"]
        assert row["sparse_indices"] == sorted(set(row["sparse_indices"]))
        assert min(row["sparse_values"]) > 0
        assert np.linalg.norm(row["dense"]) == pytest.approx(1.0, abs=1e-2)
    assert table.num_rows == 3 and table.column("n_tokens").to_pylist()[1] == 64
    described = stub_full.describe()
    assert described["stub"] is True and described["model"] == "stub:full"
    assert described["random_weights"] is False


def test_stub_vectors_are_deterministic_per_text(stub_full):
    engine = EmbedEngine(stub_full, EncodeOptions(max_length=64, dtype="float32"))
    alone = engine.encode([Document(id="x", text="the same text")]).table.to_pylist()[0]
    docs = [Document(id="y", text="other words " * 20), Document(id="x", text="the same text")]
    batched = engine.encode(docs).table.to_pylist()[1]
    np.testing.assert_allclose(alone["dense"], batched["dense"], atol=1e-6)
    assert alone["sparse_indices"] == batched["sparse_indices"]


def test_bad_stub_specs_are_refused(model_cache):
    with pytest.raises(ModelLoadError, match="unknown stub size 'huge'"):
        load_model("stub:huge", device="cpu", cache_dir=model_cache)
    from pipeline.engine.reranker import load_reranker

    with pytest.raises(ModelLoadError, match="no stub reranker"):
        load_reranker("stub:tiny", device="cpu", cache_dir=model_cache)


def test_the_stub_tables_give_what_its_encoder_and_heads_compute(stub_full):
    """The stub's outputs come from tables (one gather each): the same values the encoder
    and heads path computes from its hidden states."""
    import dataclasses

    docs = [Document(id=f"d{i}", text="word " * (5 + 7 * i)) for i in range(6)]
    options = EncodeOptions(max_length=48, dtype="float32")
    from_tables = EmbedEngine(stub_full, options).encode(docs).table
    computed = (
        EmbedEngine(dataclasses.replace(stub_full, stub_heads=None), options).encode(docs).table
    )
    assert from_tables.column("sparse_indices").equals(computed.column("sparse_indices"))
    for name in ("dense", "sparse_values"):
        left = from_tables.column(name).combine_chunks().flatten().to_numpy()
        right = computed.column(name).combine_chunks().flatten().to_numpy()
        assert len(left) > len(docs)
        # Sums of 1,024 products taken in another order (the table's GEMV against the
        # batch's; MKL's order also follows memory alignment on AMD CPUs): ~1e-6 apart.
        np.testing.assert_allclose(left, right, rtol=1e-5)
    field = from_tables.schema.field("colbert")
    left = colbert_rows(from_tables.column("colbert"), field)
    right = colbert_rows(computed.column("colbert"), field)
    for mine, theirs in zip(left, right, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=1e-7)


def test_the_stub_on_a_device_leaves_its_colbert_vectors_there(stub_full):
    """On a CPU the ColBERT vectors go straight into a host buffer used again; on a device
    (here `meta`, standing in for CUDA) they stay there for the engine's copy to pinned
    memory: a host buffer as the gather's output would fail across devices."""
    import torch

    from schemas.options import Mode

    heads = stub_full.stub_heads
    ids = torch.arange(12).reshape(2, 6)
    on_cpu = heads.outputs(ids, (Mode.COLBERT,), torch.float16)["colbert"]
    assert on_cpu.device.type == "cpu" and on_cpu.shape == (2, 5, heads.unit.shape[1])
    again = heads.outputs(ids, (Mode.COLBERT,), torch.float16)["colbert"]
    assert torch.equal(again, on_cpu) and again.data_ptr() != on_cpu.data_ptr()  # both held
    from pipeline.engine.stub_model import stub_parts

    on_device = stub_parts("full", torch.float32)["stub_heads"].to("meta")
    elsewhere = on_device.outputs(ids.to("meta"), (Mode.COLBERT,), torch.float16)
    assert elsewhere["colbert"].device.type == "meta"
    assert elsewhere["colbert"].shape == on_cpu.shape


def test_the_stubs_emulated_device_runs_beside_the_host_one_batch_after_another(
    stub_full, monkeypatch
):
    """With a rate, a launch returns at once and the batch is done `tokens / rate` seconds
    after the device is free: the engine waits for it in `result`, as for a CUDA event,
    and the host places the previous batch meanwhile (issue 29: a CPU sees the overlap)."""
    import time

    import torch

    from pipeline.engine.device_forms import DeviceForms
    from pipeline.engine.encoder import forward_batch
    from schemas.options import Mode, StorageDtype

    monkeypatch.setattr(stub_full.stub_heads, "tokens_per_second", 20_000.0)
    sequences = [[5] * 500, [7] * 500]  # 1,000 tokens: 50 ms on the emulated device
    forms = DeviceForms(StorageDtype.FLOAT16)
    launched = time.perf_counter()
    first = forward_batch(stub_full, sequences, np.arange(2), (Mode.DENSE,), forms)
    second = forward_batch(stub_full, sequences, np.arange(2), (Mode.DENSE,), forms)
    assert time.perf_counter() - launched < 0.05  # neither launch waited for the device
    assert first.ready_at is not None and second.ready_at is not None
    assert second.ready_at - first.ready_at == pytest.approx(0.05, rel=1e-6)  # one device
    second.result()
    assert time.perf_counter() >= second.ready_at
    assert torch.is_tensor(first.host["dense"]) and stub_full.stub_heads.take_ready_at() is None


def test_the_generic_tokenizer_is_loaded_as_autotokenizer_would_without_its_registry(
    stub_full, tiny, tmp_path, monkeypatch
):
    """`load_tokenizer` skips AutoTokenizer (and transformers' registry of every model) only
    where the config names the generic backend, and returns what AutoTokenizer returns."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from pipeline.engine.model import load_tokenizer

    probes = ["hello world", "Größe café naïve", "日本語のテキスト", "emoji 🧪 x\u0301", ""]
    for path in {Path(stub_full.path), Path(tiny.path)}:
        direct, auto = load_tokenizer(path), AutoTokenizer.from_pretrained(str(path))
        assert type(direct) is type(auto)
        assert direct.special_tokens_map == auto.special_tokens_map
        assert direct(probes)["input_ids"] == auto(probes)["input_ids"]
    # Another class named: AutoTokenizer resolves it, as before.
    asked: list[str] = []
    real = AutoTokenizer.from_pretrained.__func__

    def recording(cls, name, *args, **kwargs):
        asked.append(Path(name).name)
        return real(cls, name, *args, **kwargs)

    renamed = tmp_path / "renamed"
    shutil.copytree(Path(stub_full.path), renamed)
    config = json.loads((renamed / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "XLMRobertaTokenizer"
    (renamed / "tokenizer_config.json").write_text(json.dumps(config))
    with monkeypatch.context() as patched:
        patched.setattr(AutoTokenizer, "from_pretrained", classmethod(recording))
        load_tokenizer(Path(stub_full.path))
        assert asked == []
        load_tokenizer(renamed)
        assert asked == ["renamed"]
    # No config at all: AutoTokenizer's own error, as before.
    with pytest.raises((ValueError, OSError)):
        load_tokenizer(tmp_path / "nothing-here")
