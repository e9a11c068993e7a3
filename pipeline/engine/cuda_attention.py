"""Attention on CUDA for padded batches: variable-length flash attention, with no mask.

transformers' SDPA path hands a padded batch to `scaled_dot_product_attention` with a
materialised [B, 1, L, L] boolean mask. A mask rules out SDPA's flash kernel, and at
8 x 8,192 tokens the mask alone is 512 MiB. Here a padded batch's real tokens are packed
into one [T, heads, dim] run and given to `torch.nn.attention.varlen.varlen_attn` (flash
attention over cumulative sequence offsets: no mask, no padding in the arithmetic); the
result is scattered back to the padded layout the rest of the layer expects. A batch with
no padding goes to SDPA with no mask, which picks flash by itself.

The packing (which positions are real, and the offsets) is computed once per forward
pass, not per layer: the 24 layers receive the same 2-D padding mask object. The rows at
padded positions come back as zeros (SDPA gives them an average of the real values); no
output reads them (dense reads the first token, sparse and ColBERT drop masked tokens),
and tests/pipeline/engine/test_cuda_attention.py checks that the engine's tables are equal.

Installed on a CUDA encoder or reranker when the torch build has `varlen_attn`
(`wanted`); `M3PIPE_CUDA_ATTENTION=sdpa` turns it off.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

NAME = "m3pipe_varlen"
ENV = "M3PIPE_CUDA_ATTENTION"  # "sdpa" turns it off

# (query, key, value, cu_seq_q, cu_seq_k, max_q, max_k) -> [T, heads, dim]; the tests put
# a per-sequence SDPA here to run the packing on a CPU.
VarlenKernel = Callable[..., Any]


def _torch_varlen() -> VarlenKernel | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch before 2.10
        return None
    return varlen_attn


def wanted(device: torch.device, kernel: VarlenKernel | None = None) -> bool:
    """Whether a model on `device` gets the variable-length attention."""
    return (
        device.type == "cuda"
        and os.environ.get(ENV, NAME).lower() != "sdpa"
        and (kernel or _torch_varlen()) is not None
    )


def install(model: Any, kernel: VarlenKernel | None = None) -> None:
    """Run `model`'s attention (a transformers encoder or classifier) through `kernel`
    (torch's `varlen_attn` unless given) for padded batches."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    chosen = kernel or _torch_varlen()
    if chosen is None:
        raise RuntimeError("this torch has no torch.nn.attention.varlen")
    takes_scale = "scale" in inspect.signature(chosen).parameters

    def forward(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        return varlen_attention(
            query, key, value, attention_mask, scaling, chosen, takes_scale, dropout
        )

    AttentionInterface.register(NAME, forward)
    # The 2-D padding mask (None when nothing is padded), as flash attention 2 gets it.
    AttentionMaskInterface.register(NAME, flash_attention_mask)
    model.set_attn_implementation(NAME)


class Packing(NamedTuple):
    """Where a padded batch's real tokens are: flat positions, offsets, the longest."""

    positions: torch.Tensor  # [T] indices into the B * L flattened positions
    offsets: torch.Tensor  # [B + 1] int32 cumulative lengths
    longest: int


_cache = threading.local()  # the last mask packed in this thread, and its packing


def packing(mask: torch.Tensor) -> Packing:
    """The packing of a [B, L] padding mask (True or 1 = a real token, right-padded or
    not), computed once per mask object: every layer of one forward pass gets the same."""
    cached = getattr(_cache, "last", None)
    if cached is not None and cached[0] is mask:
        return cached[1]
    real = mask.bool()
    lengths = real.sum(dim=1, dtype=torch.int32)
    offsets = torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
    # One host sync per forward pass: the packed length decides the buffers' shapes.
    result = Packing(
        positions=real.flatten().nonzero().squeeze(1),
        offsets=offsets,
        longest=int(lengths.max()),
    )
    _cache.last = (mask, result)
    return result


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    kernel: VarlenKernel,
    takes_scale: bool,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: [B, H, L, D] in, [B, L, H, D] out."""
    batch, heads, length, dim = query.shape
    default_scale = dim**-0.5
    scale = float(scaling) if scaling is not None else default_scale
    if (
        attention_mask is None
        or attention_mask.dim() != 2
        or key.shape[2] != length
        or dropout
        or (not takes_scale and abs(scale - default_scale) > 1e-12)
    ):
        # Nothing padded (flash by itself), or a case the packing does not cover.
        if attention_mask is not None and attention_mask.dim() == 2:
            attention_mask = attention_mask[:, None, None, :].bool()
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scale
        )
        return out.transpose(1, 2).contiguous(), None
    pack = packing(attention_mask)

    def packed(x: torch.Tensor) -> torch.Tensor:  # [B, H, L, D] -> [T, H, D]
        return x.transpose(1, 2).reshape(batch * length, heads, dim)[pack.positions]

    extra = {"scale": scale} if takes_scale else {}
    out = kernel(
        packed(query), packed(key), packed(value), pack.offsets, pack.offsets,
        pack.longest, pack.longest, **extra,
    )  # fmt: skip
    padded = out.new_zeros(batch * length, heads, dim)
    padded[pack.positions] = out
    return padded.view(batch, length, heads, dim), None
