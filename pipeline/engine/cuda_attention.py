"""Attention on CUDA for padded batches: variable-length flash attention, with no mask.

transformers' SDPA path hands a padded batch to `scaled_dot_product_attention` with a
materialised [B, 1, L, L] boolean mask. A mask rules out SDPA's flash kernel, and at
8 x 8,192 tokens the mask alone is 512 MiB. Here a padded batch's real tokens are packed
into one [T, heads, dim] run and given to `torch.nn.attention.varlen.varlen_attn` (flash
attention over cumulative sequence offsets: no mask, no padding in the arithmetic); the
result is scattered back to the padded layout the rest of the layer expects. A batch with
no padding goes to SDPA with no mask, which picks flash by itself.

The packing (which positions are real, and the offsets) comes with the batch: the engines
compute it from the lengths the host already has (`host_packing`) and pass it to the
forward pass (`PACKING_KWARG`), which hands it to every layer. Nothing in the pass reads
the device back, so launching a batch never waits for the one before it; the mask function
registered with it (`padding_mask`) likewise skips flash attention 2's check that the mask
has padding at all (a read of the device; m3pipe passes a mask only when there is). Without
a packing given, one is computed from the mask once per forward pass (one host sync): the
24 layers receive the same 2-D padding mask object. The rows at
padded positions come back as zeros (SDPA gives them an average of the real values); no
output reads them (dense reads the first token, sparse and ColBERT drop masked tokens),
and tests/pipeline/engine/test_cuda_attention.py checks that the engine's tables are equal.

Installed on a CUDA encoder or reranker when the torch build has `varlen_attn`
(`wanted`); `M3PIPE_CUDA_ATTENTION=sdpa` turns it off.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

NAME = "m3pipe_varlen"
ENV = "M3PIPE_CUDA_ATTENTION"  # "sdpa" turns it off
PACKING_KWARG = "m3pipe_packing"  # a forward pass's keyword: its batch's Packing

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
    from transformers.masking_utils import AttentionMaskInterface

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
            query, key, value, attention_mask, scaling, chosen, takes_scale, dropout,
            kwargs.get(PACKING_KWARG),
        )  # fmt: skip

    AttentionInterface.register(NAME, forward)
    AttentionMaskInterface.register(NAME, padding_mask)
    model.set_attn_implementation(NAME)


def takes_packing(model: Any) -> bool:
    """Whether `model`'s attention is this module's and its forward pass hands keywords on
    to it (transformers 5's models do; where one does not, the packing comes from the mask)."""
    if getattr(getattr(model, "config", None), "_attn_implementation", None) != NAME:
        return False
    return _takes_keywords(type(model).forward)


@functools.cache
def _takes_keywords(function: Callable[..., Any]) -> bool:
    """Once per model class, not per batch."""
    parameters = inspect.signature(function).parameters.values()
    return any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters)


def padding_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """The 2-D padding mask as the forward pass was given it (transformers' mask-function
    interface): flash attention 2's, without its `attention_mask.all()`, which reads the
    device back to drop a mask that pads nothing."""
    return None if attention_mask is None else attention_mask[:, -kv_length:]


class Packing(NamedTuple):
    """Where a padded batch's real tokens are: flat positions, offsets, the longest."""

    positions: torch.Tensor  # [T] indices into the B * L flattened positions
    offsets: torch.Tensor  # [B + 1] int32 cumulative lengths
    longest: int


_cache = threading.local()  # the last mask packed in this thread, and its packing


def host_packing(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A right-padded batch's packing from its rows' lengths, on the host: (positions,
    offsets, longest), what `packing` computes from the mask, with no device read."""
    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(lengths.max())
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    within = np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], lengths)
    positions = np.repeat(np.arange(len(lengths)) * width, lengths) + within
    return positions, offsets, width


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
    given: Packing | None = None,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: [B, H, L, D] in, [B, L, H, D] out.
    `given`: the batch's packing, as the engine computed it (else from the mask)."""
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
    pack = given if given is not None else packing(attention_mask)

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
