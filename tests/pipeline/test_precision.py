"""Compute precision: auto is bf16 only on CPUs that multiply bf16 natively, fp32 is the
exact mode, and the choice made is what every file records."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.cli.main import main
from pipeline.engine import model as model_module
from pipeline.engine.model import resolve_dtype
from pipeline.errors import ModelLoadError
from schemas.output import read_output_metadata

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("flags", "auto"),
    [
        ({"avx512f", "avx512_bf16"}, torch.bfloat16),  # AVX512-BF16 (Zen 4, Cooper Lake)
        ({"amx_tile", "amx_bf16"}, torch.bfloat16),  # AMX (Sapphire Rapids and later)
        ({"avx512f", "avx2"}, torch.float32),  # bf16 would be emulated: slower than fp32
        (set(), torch.float32),  # no /proc/cpuinfo
    ],
)
def test_auto_is_bf16_only_where_the_cpu_multiplies_bf16_natively(monkeypatch, flags, auto):
    monkeypatch.setattr(model_module, "cpu_flags", lambda: frozenset(flags))
    assert resolve_dtype(CPU, "auto") is auto and resolve_dtype(CPU, None) is auto
    assert resolve_dtype(CPU, "fp32") is torch.float32  # the exact mode, whatever the CPU
    assert resolve_dtype(CPU, "bf16") is torch.bfloat16
    assert resolve_dtype(torch.device("cuda"), "auto") is torch.float16
    assert resolve_dtype(torch.device("cuda"), "bf16") is torch.bfloat16
    with pytest.raises(ModelLoadError, match="fp16 is not supported on CPU"):
        resolve_dtype(CPU, "fp16")


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
