"""Model FLOPs, the matmul peak measured in the same run, and MFU = achieved / peak.

FLOPs of one sequence of n tokens through an encoder of L layers, hidden size d and
feed-forward size f (multiply-adds count 2):

    per layer: 2n(4d^2 + 2df)   the Q, K, V and output projections and the two FFN matmuls
             + 4n^2 d           the attention scores (QK^T) and their use (AV)
    heads:     2n d c + 2n d    ColBERT projection (c outputs) and sparse weight (1 output)

Embeddings, layer norms, softmax and activations are left out (not matmul work), as in the
usual MFU convention; so MFU slightly understates what the hardware did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any


def encoder_flops(
    lengths: Iterable[int], layers: int, hidden: int, ffn: int, head_outputs: int = 0
) -> float:
    """Matmul FLOPs of encoding sequences of these lengths (see the module docstring)."""
    total = 0.0
    for n in lengths:
        per_layer = 2 * n * (4 * hidden**2 + 2 * hidden * ffn) + 4 * n * n * hidden
        total += layers * per_layer + 2 * n * hidden * head_outputs
    return total


def model_flops(config: Any, lengths: Sequence[int], head_outputs: int = 0) -> float:
    """`encoder_flops` with the sizes of a transformers config (XLM-RoBERTa layout)."""
    return encoder_flops(
        lengths,
        int(config.num_hidden_layers),
        int(config.hidden_size),
        int(config.intermediate_size),
        head_outputs,
    )


def matmul_peak(
    device: str, dtype: Any, shapes: Sequence[tuple[int, int, int]], seconds: float = 1.0
) -> dict[str, Any]:
    """The best FLOP/s of torch.matmul over `shapes` (m, k, n), each run for ~`seconds`
    after a warm-up; returns the best and every shape's figure. On a GPU an 8192-cube is
    added (the largest square GEMMs reach the highest rate there), and products are queued
    in growing groups between synchronisations so that launch latency is not counted. In
    fp32 on a CPU, oneDNN's GEMM is measured too (`<shape> onednn`): the engine's linears
    run through it where it is faster than MKL's (pipeline/engine/cpu_linear.py)."""
    import torch

    from pipeline.engine import cpu_linear

    figures = {}
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda and (8192, 8192, 8192) not in shapes:
        shapes = [*shapes, (8192, 8192, 8192)]
    onednn = not cuda and dtype == torch.float32 and cpu_linear.available()
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        products: dict[str, Callable[[], Any]] = {f"{m}x{k}x{n}": partial(torch.matmul, a, b)}
        if onednn:
            weight = b.t().contiguous()  # a Linear's weight is [out, in]
            products[f"{m}x{k}x{n} onednn"] = partial(cpu_linear.linear, a, weight, None)
        for name, product in products.items():
            figures[name] = round(2 * m * k * n * _rate(product, sync, cuda, seconds) / 1e9, 1)
    best = max(figures, key=figures.__getitem__)
    return {"gflops": figures[best], "shape": best, "shapes": figures}


def _rate(product: Callable[[], Any], sync: Callable[[], Any], cuda: bool, seconds: float) -> float:
    """Products per second, after a warm-up (kernel choice, packing)."""
    import torch

    with torch.inference_mode():
        product()
        sync()
        runs, group, started = 0, 1, time.perf_counter()
        while True:
            for _ in range(group):
                product()
            runs += group
            sync()
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return runs / elapsed
            group = min(2 * group, 64) if cuda else 1


def peak_shapes(config: Any, tokens: int, square: int = 4096) -> list[tuple[int, int, int]]:
    """Square GEMMs of `square` and half that, plus the model's own: its FFN and QKV
    projections at `tokens` rows. (A dry run passes a small `square`: a 4096-cube takes
    ~1 s a product in fp32 on two CPU cores, and it is measured four times a side.)"""
    hidden, ffn = int(config.hidden_size), int(config.intermediate_size)
    return [
        (square // 2, square // 2, square // 2),
        (square, square, square),
        (tokens, hidden, ffn),
        (tokens, ffn, hidden),
        (tokens, hidden, 3 * hidden),
    ]
