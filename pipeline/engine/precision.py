"""Where a model runs and in what precision: the device asked for (or the best one here),
and the compute dtype: `auto` by device and CPU instruction set, or as asked."""

from __future__ import annotations

import torch

from pipeline.errors import ModelLoadError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


# CPU instruction sets that multiply bf16 natively: oneDNN then runs bf16 matmuls at several
# times the fp32 rate. Without one, bf16 is emulated and slower than fp32.
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags this CPU reports (empty where /proc/cpuinfo is missing)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def resolve_dtype(
    device: torch.device, precision: str | None, reranker: bool = False
) -> torch.dtype:
    """auto: fp16 on CUDA (FlagEmbedding's own default there); on a CPU that multiplies bf16
    natively (AMX, AVX512-BF16) bf16 for embedding, which kept dense and ColBERT within a
    cosine of 2e-4 of fp32 and sparse weights at a weighted Jaccard of 0.99 on the trained
    proxy (docs/engine.md, "Precision"); fp32 elsewhere, and for the reranker, whose bf16
    accuracy is not measured on trained weights. fp32 is the FlagEmbedding-exact mode."""
    if precision in (None, "auto"):
        if device.type == "cuda":
            return torch.float16
        native = bool(cpu_flags() & NATIVE_BF16_FLAGS)
        return torch.bfloat16 if native and not reranker else torch.float32
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision {precision!r}: choose {', '.join(PRECISIONS)}")
    if device.type == "cpu" and precision == "fp16":
        raise ModelLoadError("fp16 is not supported on CPU: use fp32 (default) or bf16")
    return PRECISIONS[precision]


def precision_advice(device: torch.device, dtype: torch.dtype) -> str | None:
    """What to tell a user about this CPU and precision, or None."""
    if device.type != "cpu":
        return None
    native = bool(cpu_flags() & NATIVE_BF16_FLAGS)
    if dtype == torch.bfloat16 and not native:
        return (
            "this CPU has no native bf16 matmul (AMX or AVX512-BF16): bf16 is emulated and "
            "slower than fp32 here"
        )
    if dtype == torch.float32 and native:
        return (
            "this CPU multiplies bf16 natively: --precision bf16 runs faster (1.8x fp32 on "
            "an AMD EPYC with AVX512-BF16; auto's choice for embedding here; fp32 is the "
            "FlagEmbedding-exact mode: docs/engine.md)"
        )
    return None
