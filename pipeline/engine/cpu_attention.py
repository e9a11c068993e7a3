"""Attention on a CPU in bf16 (and fp32 where MKL is slow): oneDNN Graph's fused kernel,
where PyTorch's SDPA is slow.

On a CPU, PyTorch's flash SDPA kernel runs bf16 no faster than fp32, far below the GEMMs
around it, so attention takes a large share of a bf16 forward pass. The same arithmetic
written out (QK^T, scale, mask, softmax, @V), traced by TorchScript with oneDNN Graph fusion
on, runs as one fused oneDNN partition at several times SDPA's rate (the figures:
docs/engine.md, "Where bf16 time goes"; benchmarks/bench_attention.py).

It is installed on a CPU encoder or reranker (`install`, see `wanted`), as a transformers
attention implementation: every layer calls it. Padded batches get the same boolean mask
SDPA gets; unpadded ones get no mask, and a kernel traced without one (faster).
TorchScript compiles a fused kernel per input shape (once per batch shape: the 24 layers
share it). At most MAX_SHAPES shapes are compiled per process; a batch of any other shape
runs SDPA, so a long-running worker's compiled kernels stay bounded. A batch whose
attention scores would pass MAX_SCORES_BYTES (long documents) runs a block of query rows
at a time, so its memory stays bounded too; long batches run in blocks of query rows
anyway, small enough for a head's scores to stay in cache, which is faster.
`M3PIPE_CPU_ATTENTION=sdpa` turns it off.

fp32 gets it too where its Linear layers run through oneDNN (pipeline/engine/cpu_linear.py:
CPUs where MKL's sgemm is slow, which SDPA's fp32 kernel computes with), with the same error
against float64 as SDPA's. fp16 always runs SDPA.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

from pipeline.engine import cpu_linear

log = logging.getLogger(__name__)

NAME = "m3pipe_onednn"
MAX_SHAPES = 256  # fused kernels compiled per process, then SDPA for new shapes
# The fused kernel holds a call's attention scores whole ([B, heads, rows, L], about
# twice over at its peak), where SDPA's flash kernel works in blocks: a batch whose scores
# would pass this is computed a block of query rows at a time (long documents, where a
# 16,384-token batch would otherwise need gigabytes).
MAX_SCORES_BYTES = 256 << 20
# The kernel is fastest when one head's block of scores stays in cache: a call takes at
# most this many bytes of scores per head, whatever its memory allows (256 query rows at
# 8,192 tokens, 512 at 4,096, all of them up to 1,448): 1.3-1.4x faster at 4,096-8,192
# tokens than one call on every row (benchmarks/bench_attention.py, `onednn` against
# `onednn-whole`).
BLOCK_SCORES_BYTES = 4 << 20
ENV = "M3PIPE_CPU_ATTENTION"  # "sdpa" turns it off

_lock = threading.Lock()
_traced: dict[tuple[float, torch.dtype, bool], Any] = {}  # (scale, dtype, masked)
_shapes: set[tuple[int | bool, ...]] = set()  # query and key shapes, masked


def wanted(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a model on `device` in `dtype` gets the fused attention."""
    return (
        device.type == "cpu"
        and (dtype == torch.bfloat16 or cpu_linear.wanted(device, dtype))
        and os.environ.get(ENV, "onednn").lower() != "sdpa"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.jit, "enable_onednn_fusion")  # TorchScript's, deprecated
    )


def install(model: Any) -> None:
    """Run `model`'s attention (a transformers encoder or classifier) through the fused
    kernel."""
    enable()
    model.set_attn_implementation(NAME)


def enable() -> None:
    """Process-wide: TorchScript's oneDNN fusion on, with room for MAX_SHAPES shape
    specialisations, and the attention registered with transformers under NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    torch.jit.enable_onednn_fusion(True)
    with warnings.catch_warnings():  # TorchScript is deprecated; torch.compile is no faster
        warnings.simplefilter("ignore", DeprecationWarning)
        # TorchScript counts its own specialisations (strides too): room beyond MAX_SHAPES,
        # so it never stops fusing before `_kernel` hands new shapes to SDPA.
        torch.jit.set_fusion_strategy([("STATIC", 2 * MAX_SHAPES)])
    AttentionInterface.register(NAME, fused_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the mask SDPA would be given


def fused_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: [B, H, L, D] in, [B, L, H, D] out."""
    batch, heads, length, dim = query.shape
    keys = key.shape[2]
    scale = float(scaling if scaling is not None else dim**-0.5)
    # Query rows a call takes: its scores within MAX_SCORES_BYTES and a head's within
    # BLOCK_SCORES_BYTES, in steps of 64 (a softmax is per query row, so cutting the queries
    # changes nothing).
    head_row = keys * query.element_size()  # one query row's scores, one head
    fits = min(MAX_SCORES_BYTES // (batch * heads * head_row), BLOCK_SCORES_BYTES // head_row)
    rows = length if fits >= length else max(64, fits // 64 * 64)
    spans = [(start, min(start + rows, length)) for start in range(0, length, rows)]
    masked = attention_mask is not None
    traced, fresh = None, set[int]()
    if keys == length and not dropout:
        traced, fresh = _kernel(query, key, scale, [end - start for start, end in spans], masked)
    if traced is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            is_causal=False, **kwargs,
        )  # fmt: skip
    # Unpadded batches (a long document runs alone) need no mask, and the kernel without
    # one is 1.06-1.35x faster (bench_attention: onednn against onednn-masked).
    if attention_mask is None:
        rest: tuple[torch.Tensor, ...] = (key, value)
    else:
        rest = (key, value, _additive_mask(attention_mask, query.dtype))
    # TorchScript's first call at a shape is a profiling run through unfused ops, whose
    # sums round differently from the fused kernel's: one call at each new shape first, so
    # a document's vectors are the same bits whichever batch first met its shape.
    for rows in fresh:
        start = next(a for a, b in spans if b - a == rows)
        traced(query[:, :, start : start + rows], *rest)
    if len(spans) == 1:
        out = traced(query, *rest)
    else:
        out = torch.cat([traced(query[:, :, a:b], *rest) for a, b in spans], dim=2)
    return out.transpose(1, 2).contiguous(), None


def _kernel(
    query: torch.Tensor, key: torch.Tensor, scale: float, rows: list[int], masked: bool
) -> tuple[Callable[..., torch.Tensor] | None, set[int]]:
    """The traced attention for this scale and dtype, with or without a mask argument, to
    be called on query blocks of `rows` rows (None if that needs a shape past the
    MAX_SHAPES compiled already), and the block lengths it has not been called at yet."""
    shapes = {(query.shape[0], query.shape[1], n, *key.shape, masked) for n in rows}
    with _lock:
        new = shapes - _shapes
        if len(_shapes) + len(new) > MAX_SHAPES:
            return None, set()
        _shapes.update(new)
        kernel = _traced.get((scale, query.dtype, masked))
        if kernel is None:
            # Traced on tiny inputs: tracing runs the function eagerly once, and the
            # batch's own would materialise all its scores (gigabytes for long texts).
            tiny = torch.zeros(1, 1, 8, query.shape[3], dtype=query.dtype)
            inputs: tuple[torch.Tensor, ...] = (tiny, tiny, tiny)
            if masked:
                inputs += (torch.zeros(1, 1, 1, 8, dtype=query.dtype),)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                kernel = torch.jit.trace(_attention(scale, masked), inputs)
            _traced[(scale, query.dtype, masked)] = kernel
        return kernel, {shape[2] for shape in new}


def _attention(scale: float, masked: bool) -> Callable[..., torch.Tensor]:
    # The patterns oneDNN Graph fuses: matmul, scale, (add,) softmax, matmul.
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    def masked_attention(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    return masked_attention if masked else attention


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, 1, L]: 0 where a key may be attended, the dtype's minimum where not. An
    encoder's padding mask is the same for every query row, so the first row says it."""
    row = mask[:, :, :1, :]
    if row.dtype == torch.bool:
        return torch.zeros(row.shape, dtype=dtype).masked_fill(~row, torch.finfo(dtype).min)
    return row.to(dtype)
