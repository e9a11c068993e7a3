"""Compute precision: auto is fp32 (exact) on CPU and fp16 on CUDA, bf16 is a choice the CPU's
flags advise on, and the choice made is what every file records."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.cli.main import main
from pipeline.engine import model as model_module
from pipeline.engine.model import precision_advice, resolve_dtype
from pipeline.errors import ModelLoadError
from schemas.output import read_output_metadata

CPU = torch.device("cpu")


def test_auto_is_fp32_on_cpu_and_fp16_on_cuda():
    assert resolve_dtype(CPU, "auto") is torch.float32 and resolve_dtype(CPU, None) is torch.float32
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
    monkeypatch.setattr(model_module, "cpu_flags", lambda: frozenset(flags))
    said = precision_advice(CPU, dtype)
    assert said is None if advice is None else advice in said
    assert precision_advice(torch.device("cuda"), dtype) is None


def test_this_machine_reports_its_cpu_flags():
    flags = model_module.cpu_flags()
    assert not flags or "fpu" in flags  # read from /proc/cpuinfo, not guessed


def test_the_setting_and_the_flag_choose_the_precision_every_file_records(
    tmp_path, monkeypatch, capsys
):
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(3))
    )
    cases = [
        ("bf16", [], "bfloat16"),
        ("fp32", [], "float32"),
        ("fp32", ["--precision", "bf16"], "bfloat16"),
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
