"""One forward pass per batch, every requested output post-processed on the device.

Semantics are FlagEmbedding's M3 inference path (`M3Embedder.encode_single_device`):
- dense: L2-normalised hidden state of <s>;
- sparse: relu(sparse_linear(h)) per token, max-pooled per token id, weights > 0 only,
  cls/eos/pad/unk dropped;
- colbert: colbert_linear(h[:, 1:]) on real tokens, L2-normalised, n_tokens - 1 vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.engine.model import M3Model
from pipeline.errors import RetryableError
from schemas.options import Mode, StorageDtype

Out = TypeVar("Out")  # what one forward pass returns (embeddings, reranker logits)

_STORAGE = {StorageDtype.FLOAT16: torch.float16, StorageDtype.FLOAT32: torch.float32}


@dataclass
class BatchOutput:
    """Host arrays of one batch, rows in the batch's order; flat arrays split by counts."""

    rows: np.ndarray  # sequence indices (into the shard) of the batch's rows
    dense: np.ndarray | None = None  # [B, D]
    sparse_counts: np.ndarray | None = None  # [B]
    sparse_indices: np.ndarray | None = None  # [sum counts] int32, ascending per row
    sparse_values: np.ndarray | None = None  # [sum counts] float32
    colbert_counts: np.ndarray | None = None  # [B]
    colbert: np.ndarray | None = None  # [sum counts, D]


def pad_batch(
    sequences: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids and attention_mask, built in numpy and moved in one copy each."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return (
        torch.from_numpy(ids).to(device, non_blocking=True),
        torch.from_numpy(mask).to(device, non_blocking=True),
    )


def _sparse(
    model: M3Model, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row unique token ids (ascending) with their max weight, without Python loops."""
    assert model.sparse_linear is not None
    weights = torch.relu(model.sparse_linear(hidden)).squeeze(-1)  # [B, L]
    unused = torch.tensor(model.unused_token_ids, device=ids.device)
    keep = mask.bool() & (weights > 0) & ~torch.isin(ids, unused)
    rows, cols = keep.nonzero(as_tuple=True)
    keys = rows * model.vocab_size + ids[rows, cols]
    unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    values = torch.zeros(unique_keys.shape[0], dtype=weights.dtype, device=weights.device)
    values = values.scatter_reduce(
        0, inverse, weights[rows, cols], reduce="amax", include_self=False
    )
    counts = torch.bincount(unique_keys // model.vocab_size, minlength=ids.shape[0])
    return counts, (unique_keys % model.vocab_size).to(torch.int32), values.float()


def forward_batch(
    model: M3Model,
    sequences: list[list[int]],
    rows: np.ndarray,
    modes: tuple[Mode, ...],
    storage: StorageDtype,
) -> BatchOutput:
    """Encode one batch; every output is copied to the host once, after all device work."""
    ids, mask = pad_batch(sequences, model.pad_id, model.device)
    store = _STORAGE[storage]
    on_device: dict[str, torch.Tensor] = {}
    # Without padding no mask is needed, which lets SDPA use its fused kernel and skip
    # materialising the [heads, L, L] mask: long documents mostly run alone.
    uniform = all(len(s) == len(sequences[0]) for s in sequences)
    with torch.inference_mode():
        hidden = model.encoder(
            input_ids=ids, attention_mask=None if uniform else mask, return_dict=True
        )
        hidden = hidden.last_hidden_state
        if Mode.DENSE in modes:
            on_device["dense"] = F.normalize(hidden[:, 0], dim=-1).to(store)
        if Mode.SPARSE in modes:
            counts, indices, values = _sparse(model, hidden, ids, mask)
            on_device.update(sparse_counts=counts, sparse_indices=indices, sparse_values=values)
        if Mode.COLBERT in modes:
            assert model.colbert_linear is not None
            real = mask[:, 1:].bool()
            vectors = model.colbert_linear(hidden[:, 1:][real])
            on_device["colbert"] = F.normalize(vectors, dim=-1).to(store)
            on_device["colbert_counts"] = real.sum(dim=1)
        host = {name: t.to("cpu", non_blocking=True) for name, t in on_device.items()}
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
    return BatchOutput(rows=rows, **{name: t.numpy() for name, t in host.items()})


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def encode_with_split(
    run: Callable[[np.ndarray], Out],
    rows: np.ndarray,
    empty_cache: Callable[[], None],
    on_oom: Callable[[np.ndarray], None] | None = None,
) -> list[Out]:
    """Run a batch; on out-of-memory split it in halves and retry, never dropping a row.
    `on_oom(rows)` hears of each batch that did not fit (the engine lowers its budget)."""
    try:
        return [run(rows)]
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        message = str(exc)[:300]
    # Out of the except block: the exception and its traceback, which hold the failed
    # pass's tensors, are gone, so the cache can really be emptied.
    empty_cache()
    if on_oom is not None:
        on_oom(rows)
    if len(rows) == 1:
        raise RetryableError(
            "out of memory on a single sequence; retry on a device with more free memory "
            f"or lower --max-length ({message})"
        )
    half = len(rows) // 2
    return encode_with_split(run, rows[:half], empty_cache, on_oom) + encode_with_split(
        run, rows[half:], empty_cache, on_oom
    )
