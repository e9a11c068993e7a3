"""benchmarks/mfu.py's matmul peak: in fp32 on a CPU it counts oneDNN's GEMM too, which the
engine's linears use where it is faster (pipeline/engine/cpu_linear.py), so MFU is measured
against the fastest GEMM this process has."""

from __future__ import annotations

import pytest
import torch

from benchmarks.mfu import matmul_peak
from pipeline.engine import cpu_linear


@pytest.mark.skipif(not cpu_linear.available(), reason="no oneDNN linear op")
def test_fp32_on_cpu_measures_both_gemms_and_keeps_the_best():
    peak = matmul_peak("cpu", torch.float32, [(256, 128, 192)], seconds=0.02)
    assert set(peak["shapes"]) == {"256x128x192", "256x128x192 onednn"}
    assert peak["gflops"] == max(peak["shapes"].values()) > 0
    assert peak["shape"] in peak["shapes"]


def test_bf16_measures_torch_matmul_only():
    peak = matmul_peak("cpu", torch.bfloat16, [(256, 128, 192)], seconds=0.02)
    assert set(peak["shapes"]) == {"256x128x192"}
