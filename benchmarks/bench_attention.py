"""Attention alone on the CPU in bf16: which kernel could replace PyTorch's flash kernel.

One encoder layer's attention shape ([1, 16 heads, L, 64], bge-m3's), side by side in one
process: `scaled_dot_product_attention` (what the engine runs in fp32), the fused kernel
the engine runs in bf16 on a CPU (pipeline/engine/cpu_attention.py: oneDNN Graph through
TorchScript, its first call reported apart), called as the engine calls it (in blocks of
query rows whose scores stay in cache, unpadded), with a padding mask (`onednn-masked`) and
on every row in one call (`onednn-whole`), a blocked attention of bf16 GEMMs with an fp32
softmax (256 query rows at a time), and `flex_attention` compiled by inductor (its CPU
template; compile time reported apart).
GFLOP/s = 4 L^2 d heads / time, best of 3; error = max |out - fp32 SDPA|.

    python -m benchmarks.bench_attention --lengths 512,2048,4096,8192
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.report import run_facts, save

HEADS, HEAD_DIM, BLOCK = 16, 64, 256


def best_seconds(fn, *args, reps: int = 3) -> float:  # type: ignore[no-untyped-def]
    fn(*args)
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - started)
    return best


def blocked(q, k, v):  # type: ignore[no-untyped-def]
    import torch

    out = torch.empty_like(q)
    scale = q.shape[-1] ** -0.5
    keys = k.transpose(-1, -2)
    for start in range(0, q.shape[-2], BLOCK):
        scores = torch.matmul(q[..., start : start + BLOCK, :], keys)
        weights = torch.softmax(scores.float() * scale, dim=-1).to(q.dtype)
        out[..., start : start + BLOCK, :] = torch.matmul(weights, v)
    return out


def onednn(q, k, v):  # type: ignore[no-untyped-def]
    """The engine's bf16 CPU attention, called as transformers calls it."""
    import torch

    from pipeline.engine import cpu_attention

    out, _ = cpu_attention.fused_attention_forward(torch.nn.Module(), q, k, v, None)
    return out.transpose(1, 2)


def onednn_masked(q, k, v):  # type: ignore[no-untyped-def]
    """The same with a padding mask that keeps every key, as a padded batch calls it."""
    import torch

    from pipeline.engine import cpu_attention

    length = k.shape[2]
    keep = torch.ones(q.shape[0], 1, 1, length, dtype=torch.bool).expand(-1, 1, length, -1)
    out, _ = cpu_attention.fused_attention_forward(torch.nn.Module(), q, k, v, keep)
    return out.transpose(1, 2)


def onednn_whole(q, k, v):  # type: ignore[no-untyped-def]
    """The same fused kernel (no mask) on every query row in one call (no query blocks)."""
    from pipeline.engine import cpu_attention

    scale = q.shape[-1] ** -0.5
    kernel, _ = cpu_attention._kernel(q, k, scale, [q.shape[2]], masked=False)
    return kernel(q, k, v)


def main() -> int:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import flex_attention

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,2048,4096")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    flex = torch.compile(flex_attention, dynamic=False)
    from pipeline.engine import cpu_attention

    cpu_attention.enable()
    report = run_facts()
    report["lengths"] = {}
    for length in (int(x) for x in args.lengths.split(",")):
        q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * HEADS * length * length * HEAD_DIM
        with torch.no_grad():
            reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
            started = time.perf_counter()
            flex(q, k, v)
            compile_seconds = time.perf_counter() - started
            started = time.perf_counter()
            onednn(q, k, v)
            fused_seconds = time.perf_counter() - started
            sides = {"sdpa": F.scaled_dot_product_attention, "onednn": onednn,
                     "onednn-masked": onednn_masked, "onednn-whole": onednn_whole,
                     "blocked": blocked, "flex": flex}  # fmt: skip
            row: dict[str, object] = {
                "flex_first_call_seconds": round(compile_seconds, 1),
                "onednn_first_call_seconds": round(fused_seconds, 2),
            }
            for name, fn in sides.items():
                seconds = best_seconds(fn, q, k, v)
                error = (fn(q, k, v).float() - reference).abs().max().item()
                row[name] = {"gflops": round(flops / seconds / 1e9, 1), "max_error": error}
        report["lengths"][length] = row
        print(f"L={length}: " + ", ".join(
            f"{name} {row[name]['gflops']} GFLOP/s" for name in sides  # type: ignore[index]
        ))  # fmt: skip
    save(report, "attention", "cpu", "bf16", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
