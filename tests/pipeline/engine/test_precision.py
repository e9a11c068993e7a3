"""Compute precision: auto is fp16 on CUDA, bf16 for embedding on a CPU that multiplies bf16
natively and fp32 (exact) on another, fp32 for the reranker on a CPU; the CPU's flags decide
what users are told, and the choice made is what every file records."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.cli.main import main
from pipeline.engine import precision as precision_module
from pipeline.engine.precision import precision_advice, resolve_dtype
from pipeline.errors import ModelLoadError
from schemas.output import read_output_metadata

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("flags", "embedding", "reranking"),
    [
        ({"avx512f", "avx512_bf16"}, torch.bfloat16, torch.float32),  # Zen 4, Cooper Lake
        ({"amx_tile", "amx_bf16"}, torch.bfloat16, torch.float32),  # Sapphire Rapids
        ({"avx512f", "avx2"}, torch.float32, torch.float32),  # bf16 would be emulated
        (set(), torch.float32, torch.float32),  # no /proc/cpuinfo
    ],
)
def test_auto_on_a_cpu_is_bf16_for_embedding_only_where_bf16_is_native(
    monkeypatch, flags, embedding, reranking
):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset(flags))
    assert resolve_dtype(CPU, "auto") is embedding and resolve_dtype(CPU, None) is embedding
    assert resolve_dtype(CPU, "auto", reranker=True) is reranking
    assert resolve_dtype(CPU, "fp32") is torch.float32  # the exact mode, on request


def test_auto_is_fp16_on_cuda_and_a_named_precision_is_kept():
    assert resolve_dtype(CPU, "bf16") is torch.bfloat16
    assert resolve_dtype(torch.device("cuda"), "auto") is torch.float16
    assert resolve_dtype(torch.device("cuda"), "bf16") is torch.bfloat16
    with pytest.raises(ModelLoadError, match="fp16 is not supported on CPU"):
        resolve_dtype(CPU, "fp16")
    with pytest.raises(ModelLoadError, match="unknown precision"):
        resolve_dtype(CPU, "int4")


@pytest.mark.parametrize(
    ("flags", "dtype", "advice"),
    [
        ({"avx512f", "avx512_bf16"}, torch.float32, "bf16 runs faster"),  # Zen 4, Cooper Lake
        ({"amx_tile", "amx_bf16"}, torch.float32, "bf16 runs faster"),  # Sapphire Rapids
        ({"avx512f", "avx512_bf16"}, torch.bfloat16, None),  # the fast choice, made
        ({"avx512f", "avx2"}, torch.bfloat16, "emulated and slower than fp32"),
        ({"avx512f", "avx2"}, torch.float32, None),
        (set(), torch.float32, None),  # no /proc/cpuinfo
    ],
)
def test_the_cpu_flags_decide_what_users_are_told(monkeypatch, flags, dtype, advice):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset(flags))
    said = precision_advice(CPU, dtype)
    assert said is None if advice is None else advice in said
    assert precision_advice(torch.device("cuda"), dtype) is None


def test_this_machine_reports_its_cpu_flags():
    flags = precision_module.cpu_flags()
    assert not flags or "fpu" in flags  # read from /proc/cpuinfo, not guessed


def test_the_setting_and_the_flag_choose_the_precision_every_file_records(
    tmp_path, monkeypatch, capsys
):
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(3))
    )
    native = bool(precision_module.cpu_flags() & precision_module.NATIVE_BF16_FLAGS)
    cases = [
        ("bf16", [], "bfloat16"),
        ("fp32", [], "float32"),
        ("fp32", ["--precision", "bf16"], "bfloat16"),
        ("auto", [], "bfloat16" if native else "float32"),  # this machine's own flags
    ]
    for setting, flag, recorded in cases:
        monkeypatch.setenv("M3PIPE_PRECISION", setting)
        out = tmp_path / f"out-{setting}-{len(flag)}"
        args = ["encode", str(inp), "--out", str(out), "--model", "random:tiny", "-q", *flag]
        assert main(args) == 0, capsys.readouterr().err
        [part] = sorted(out.glob("part-*.parquet"))
        assert read_output_metadata(pq.read_schema(part))["compute_dtype"] == recorded
        manifest = json.loads((out / "_manifest.json").read_text())
        assert manifest["model"]["compute_dtype"] == recorded
