"""One forward pass per batch, every requested output post-processed on the device.

Semantics are FlagEmbedding's M3 inference path (`M3Embedder.encode_single_device`):
- dense: L2-normalised hidden state of <s>;
- sparse: relu(sparse_linear(h)) per token, max-pooled per token id, weights > 0 only,
  cls/eos/pad/unk dropped;
- colbert: colbert_linear(h[:, 1:]) on real tokens, L2-normalised, n_tokens - 1 vectors.

A batch is launched (`forward_batch`) and finished (`PendingBatch.result`) apart: every
device step has a shape known before it runs, so launching never waits for the device, and
the outputs come to the host in one copy per tensor, into pinned memory on CUDA. The engine
launches batch k + 1 before it finishes batch k: the device computes while the host places
the previous batch's vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.engine import cuda_attention
from pipeline.engine.device_forms import DeviceForms, apply_forms
from pipeline.engine.model import M3Model
from pipeline.errors import RetryableError
from schemas.options import Mode

Out = TypeVar("Out")  # what one forward pass returns (embeddings, reranker logits)


@dataclass
class BatchOutput:
    """Host arrays of one batch, rows in the batch's order."""

    rows: np.ndarray  # sequence indices (into the shard) of the batch's rows
    lengths: np.ndarray  # tokens of each row
    dense: np.ndarray | None = None  # [B, D]
    sparse_counts: np.ndarray | None = None  # [B]
    sparse_indices: np.ndarray | None = None  # [sum counts] int32, ascending per row
    sparse_values: np.ndarray | None = None  # [sum counts] float32
    colbert: np.ndarray | None = None  # [B, L - 1, D], row i's first lengths[i] - 1 are real
    # Stored forms made on the device (pipeline/engine/device_forms.py): dense and colbert
    # then hold int8 codes or packed sign bits, and an int8 form's scales are here.
    dense_scales: np.ndarray | None = None  # [B]
    colbert_scales: np.ndarray | None = None  # [B, L - 1]


def pad_batch(
    sequences: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids and attention_mask, built in numpy and moved in one copy each
    (on CUDA from pinned memory: a copy from pageable memory would wait for the device)."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return to_device(ids, device), to_device(mask, device)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """`array` on `device`, on CUDA from pinned memory: a copy from pageable memory would
    wait for the device."""
    if device.type != "cuda":
        return torch.from_numpy(array)
    return torch.from_numpy(array).pin_memory().to(device, non_blocking=True)


def row_lengths(sequences: list[list[int]]) -> np.ndarray:
    return np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))


def attention_kwargs(
    module: torch.nn.Module, lengths: np.ndarray, device: torch.device
) -> dict[str, Any]:
    """What a padded batch's forward pass takes besides its inputs: for a model with the
    CUDA variable-length attention, the batch's packing from its rows' `lengths`, which
    the host has (pipeline/engine/cuda_attention.py), so that no layer reads the device
    back."""
    if not cuda_attention.takes_packing(module):
        return {}
    positions, offsets, longest = cuda_attention.host_packing(lengths)
    packing = cuda_attention.Packing(
        to_device(positions, device), to_device(offsets, device), longest
    )
    return {cuda_attention.PACKING_KWARG: packing}


@dataclass
class BatchInputs:
    """A batch's tensors for one forward pass (`batch_inputs`)."""

    ids: torch.Tensor
    mask: torch.Tensor  # [B, L], ones on real tokens (the sparse head keeps only those)
    lengths: np.ndarray  # tokens of each row
    padded: bool  # rows of different lengths
    attention: dict[str, Any]  # attention_kwargs for a padded batch, else nothing

    @property
    def forward_mask(self) -> torch.Tensor | None:
        """The mask the encoder gets: none without padding, which lets SDPA use its fused
        kernel and skip materialising the [heads, L, L] mask (long documents mostly run
        alone)."""
        return self.mask if self.padded else None


def batch_inputs(
    sequences: list[list[int]], pad_id: int, module: torch.nn.Module, device: torch.device
) -> BatchInputs:
    """`sequences` padded and on `device`, with what `module`'s forward pass takes besides."""
    ids, mask = pad_batch(sequences, pad_id, device)
    lengths = row_lengths(sequences)
    padded = bool((lengths != lengths[0]).any())
    attention = attention_kwargs(module, lengths, device) if padded else {}
    return BatchInputs(ids, mask, lengths, padded, attention)


def _sparse(
    model: M3Model, weights: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each row's kept token ids with their max weight (`weights`: relu(sparse_linear(h)),
    float32 [B, L]), in fixed shapes (no host sync): keys (row * vocab + id) sorted, dropped
    tokens last; `first` marks each key's first place; `pooled[g]` is the max weight of the
    g-th distinct key. The host keeps the `first.sum()` leading groups
    (`PendingBatch.result`)."""
    keep = mask.bool() & (weights > 0) & ~torch.isin(ids, model.unused_ids_on_device)
    rows = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1)
    dropped = ids.shape[0] * model.vocab_size  # above every kept key
    keys = torch.where(keep, rows * model.vocab_size + ids, dropped).reshape(-1)
    keys, order = torch.sort(keys)
    values = weights.reshape(-1)[order]
    first = torch.ones_like(keys, dtype=torch.bool)
    first[1:] = keys[1:] != keys[:-1]
    first &= keys != dropped
    group = (torch.cumsum(first, 0) - 1).clamp_min(0)
    # Dropped tokens fall in the last group with weight 0: below every kept weight (> 0).
    values = torch.where(keys != dropped, values, 0.0)
    pooled = torch.zeros_like(values).scatter_reduce(0, group, values, reduce="amax")
    return {"sparse_keys": keys, "sparse_first": first, "sparse_pooled": pooled}


def _heads(
    model: M3Model,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    modes: tuple[Mode, ...],
    store: torch.dtype,
    **attention: Any,
) -> dict[str, torch.Tensor]:
    """The encoder and the heads: dense [B, D] and ColBERT [B, L - 1, D] in `store`, sparse
    weights [B, L] in float32 (before pooling), each only if its mode is asked for. `mask`
    is None for a batch without padding; `attention`: `attention_kwargs`."""
    if model.stub_heads is not None:  # a capacity test: the same outputs, read from tables
        return model.stub_heads.outputs(ids, modes, store)
    hidden = model.encoder(input_ids=ids, attention_mask=mask, return_dict=True, **attention)
    hidden = hidden.last_hidden_state
    out = {}
    if Mode.DENSE in modes:
        out["dense"] = F.normalize(hidden[:, 0], dim=-1).to(store)
    if Mode.SPARSE in modes:
        assert model.sparse_linear is not None
        out["sparse_weights"] = torch.relu(model.sparse_linear(hidden)).squeeze(-1).float()
    if Mode.COLBERT in modes:
        assert model.colbert_linear is not None
        # Padded rows too (a fixed shape): the host keeps each row's real vectors.
        out["colbert"] = F.normalize(model.colbert_linear(hidden[:, 1:]), dim=-1).to(store)
    return out


@dataclass
class PendingBatch:
    """A launched batch: its outputs are on their way to `host` (ready once `done` is)."""

    rows: np.ndarray
    lengths: np.ndarray
    host: dict[str, torch.Tensor]
    vocab_size: int
    done: torch.cuda.Event | None = None
    ready_at: float | None = None  # a stub's emulated device: done at this perf_counter time

    def result(self) -> BatchOutput:
        """Wait for the batch's copies, then its host arrays (sparse groups kept here)."""
        if self.done is not None:
            self.done.synchronize()
        if self.ready_at is not None:
            time.sleep(max(0.0, self.ready_at - time.perf_counter()))
        arrays = {name: tensor.numpy() for name, tensor in self.host.items()}
        out = BatchOutput(rows=self.rows, lengths=self.lengths)
        out.dense = arrays.get("dense")
        out.colbert = arrays.get("colbert")
        out.dense_scales = arrays.get("dense_scales")
        out.colbert_scales = arrays.get("colbert_scales")
        if "sparse_keys" in arrays:
            first = arrays["sparse_first"]
            keys = arrays["sparse_keys"][first]
            out.sparse_values = arrays["sparse_pooled"][: len(keys)]
            out.sparse_indices = (keys % self.vocab_size).astype(np.int32)
            out.sparse_counts = np.bincount(keys // self.vocab_size, minlength=len(self.rows))
        return out


def to_host(tensors: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """One copy per tensor; on CUDA into pinned memory, without waiting for it."""
    if device.type != "cuda":
        return {name: t.to("cpu") for name, t in tensors.items()}
    host = {}
    for name, tensor in tensors.items():
        pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host[name] = pinned.copy_(tensor, non_blocking=True)
    return host


def forward_batch(
    model: M3Model,
    sequences: list[list[int]],
    rows: np.ndarray,
    modes: tuple[Mode, ...],
    forms: DeviceForms,
) -> PendingBatch:
    """Launch one batch: the encoder, the heads, the stored forms and the copies to the
    host, with no step that waits for the device."""
    batch = batch_inputs(sequences, model.pad_id, model.encoder, model.device)
    with torch.inference_mode():
        on_device = _heads(
            model, batch.ids, batch.forward_mask, modes, forms.store, **batch.attention
        )
        apply_forms(on_device, forms)
        weights = on_device.pop("sparse_weights", None)
        if weights is not None:
            on_device.update(_sparse(model, weights, batch.ids, batch.mask))
        host = to_host(on_device, model.device)
        done = None
        if model.device.type == "cuda":
            done = torch.cuda.Event()
            done.record()
    ready_at = model.stub_heads.take_ready_at() if model.stub_heads is not None else None
    return PendingBatch(rows, batch.lengths, host, model.vocab_size, done, ready_at)


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
