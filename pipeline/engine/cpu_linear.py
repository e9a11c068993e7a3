"""fp32 Linear layers through oneDNN on CPUs where PyTorch's default GEMM is slow.

PyTorch runs an fp32 `nn.Linear` on a CPU through MKL's sgemm, and MKL keeps its fastest
paths for Intel CPUs; oneDNN's fp32 matmul, in the same PyTorch build, dispatches by
instruction set instead of vendor, and is much faster on other vendors' CPUs (the figures:
docs/engine.md, "fp32 on CPUs other than Intel's"; `benchmarks/bench_engine.py`'s
`fp32-mkl` side is PyTorch's own path).

`install` turns every Linear of a model loaded in fp32 on a CPU into a `OneDNNLinear`: the
same module and weights, computing through `torch.ops.mkldnn._linear_pointwise` (the op
PyTorch's inductor emits for a CPU linear). It stays fp32: oneDNN uses no reduced
precision unless `torch.backends.mkldnn.matmul.fp32_precision` asks for it, and results
differ from MKL's only by summation order (~1e-6 relative on the hidden states after 24
layers; the fp32 parity tests still hold at 1e-5). On Intel CPUs MKL is left in place.
`M3PIPE_CPU_LINEAR` = `onednn` or `mkl` forces the choice. Where it is made, fp32 attention
runs through oneDNN as well (pipeline/engine/cpu_attention.py): SDPA's fp32 kernel
multiplies with MKL's sgemm too.
"""

from __future__ import annotations

import logging
import os
from functools import cache

import torch

log = logging.getLogger(__name__)

ENV = "M3PIPE_CPU_LINEAR"  # "onednn", "mkl", or unset: by CPU vendor


class OneDNNLinear(torch.nn.Linear):
    """An `nn.Linear` computed by oneDNN (fp32 on CPU). Same parameters and state dict."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear` through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@cache
def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@cache
def available() -> bool:
    """Whether this PyTorch build has the oneDNN linear op and it computes a linear right."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        # Small integers: both GEMMs are exact on them, so any difference is a wrong op.
        x = torch.arange(48, dtype=torch.float32).reshape(3, 16) % 7 - 3
        w = torch.arange(128, dtype=torch.float32).reshape(8, 16) % 5 - 2
        b = torch.arange(8, dtype=torch.float32)
        return bool(torch.equal(linear(x, w, b), torch.nn.functional.linear(x, w, b)))
    except (RuntimeError, AttributeError) as exc:  # an op missing from this build
        log.info("oneDNN linear unavailable: %s", exc)
        return False


def wanted(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a model on `device` in `dtype` gets its Linear layers through oneDNN."""
    if device.type != "cpu" or dtype != torch.float32:
        return False
    choice = os.environ.get(ENV, "").lower()
    if choice == "mkl":
        return False
    if choice != "onednn" and _cpu_vendor() == "GenuineIntel":
        return False  # MKL's own CPUs: its fast kernels run there
    return available()


def install(model: torch.nn.Module) -> int:
    """Turn every `nn.Linear` of `model` into a `OneDNNLinear`; returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = OneDNNLinear
            count += 1
    return count
