"""One forward pass per batch, every requested output post-processed on the device.

Semantics are FlagEmbedding's M3 inference path (`M3Embedder.encode_single_device`):
- dense: L2-normalised hidden state of <s>;
- sparse: relu(sparse_linear(h)) per token, max-pooled per token id, weights > 0 only,
  cls/eos/pad/unk dropped;
- colbert: colbert_linear(h[:, 1:]) on real tokens, L2-normalised, n_tokens - 1 vectors.

On a GPU a batch is launched without waiting for it (`PendingBatch`): the device work and
the copies to pinned host memory are queued, and the host finishes the previous batch (the
sparse pooling, the trimming of padding) while the device runs this one. Nothing in the
launch depends on the device's results, so nothing synchronises: ColBERT vectors come back
padded and are trimmed on the host, the sparse weights come back per token and are pooled
there. On the CPU, where there is nothing to overlap, a batch is finished when launched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


def pad_arrays(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded input_ids and attention_mask as host arrays."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids and attention_mask, built in numpy and moved in one copy each."""
    ids, mask = pad_arrays(sequences, pad_id)
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


def pool_sparse(
    weights: np.ndarray, ids: np.ndarray, mask: np.ndarray, unused: Sequence[int], vocab: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_sparse` on the host: per row, the unique token ids (ascending) with their max
    weight. `weights` [B, L] float32, `ids` and `mask` [B, L]."""
    keep = mask.astype(bool) & (weights > 0) & ~np.isin(ids, np.asarray(unused, dtype=ids.dtype))
    rows, cols = np.nonzero(keep)
    keys = rows * vocab + ids[rows, cols]
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], weights[rows, cols][order]
    if len(keys) == 0:
        empty = np.zeros(0, np.int32), np.zeros(0, np.float32)
        return np.zeros(len(ids), np.int64), *empty
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    unique_keys = keys[starts]
    counts = np.bincount(unique_keys // vocab, minlength=len(ids))
    pooled = np.maximum.reduceat(values, starts).astype(np.float32)
    return counts, (unique_keys % vocab).astype(np.int32), pooled


@dataclass
class PendingBatch:
    """A launched batch: `result()` waits for its device work and finishes it on the host."""

    rows: np.ndarray
    ready: BatchOutput | None = None  # CPU: finished at launch
    event: torch.cuda.Event | None = None
    host: dict[str, torch.Tensor] = field(default_factory=dict)  # pinned, filled by the device
    ids: np.ndarray | None = None
    mask: np.ndarray | None = None
    model: M3Model | None = None

    def result(self) -> BatchOutput:
        if self.ready is not None:
            return self.ready
        assert self.event is not None and self.ids is not None and self.mask is not None
        assert self.model is not None
        self.event.synchronize()
        out = BatchOutput(rows=self.rows)
        if "dense" in self.host:
            out.dense = self.host["dense"].numpy()
        if "sparse_weights" in self.host:
            out.sparse_counts, out.sparse_indices, out.sparse_values = pool_sparse(
                self.host["sparse_weights"].numpy(),
                self.ids,
                self.mask,
                self.model.unused_token_ids,
                self.model.vocab_size,
            )
        if "colbert" in self.host:
            real = self.mask[:, 1:].astype(bool)
            out.colbert = self.host["colbert"].numpy()[real]  # a copy: pinned memory goes back
            out.colbert_counts = real.sum(axis=1)
        self.host.clear()
        self.ready = out
        return out


def forward_batch(
    model: M3Model,
    sequences: Sequence[Sequence[int]],
    rows: np.ndarray,
    modes: tuple[Mode, ...],
    storage: StorageDtype,
    deferred: bool | None = None,
) -> PendingBatch:
    """Launch one batch. `deferred` (default: on a GPU) queues the work without waiting;
    otherwise the batch is finished here, every output copied to the host once."""
    if deferred if deferred is not None else model.device.type == "cuda":
        return _launch(model, sequences, rows, modes, storage)
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
    return PendingBatch(rows, BatchOutput(rows=rows, **{n: t.numpy() for n, t in host.items()}))


def _launch(
    model: M3Model,
    sequences: Sequence[Sequence[int]],
    rows: np.ndarray,
    modes: tuple[Mode, ...],
    storage: StorageDtype,
) -> PendingBatch:
    """Queue one batch's device work and its copies to pinned host memory; no waiting."""
    ids_host, mask_host = pad_arrays(sequences, model.pad_id)
    pin = model.device.type == "cuda"
    ids = torch.from_numpy(ids_host).to(model.device, non_blocking=True)
    mask = torch.from_numpy(mask_host).to(model.device, non_blocking=True)
    store = _STORAGE[storage]
    on_device: dict[str, torch.Tensor] = {}
    uniform = bool(mask_host.all())
    with torch.inference_mode():
        hidden = model.encoder(
            input_ids=ids, attention_mask=None if uniform else mask, return_dict=True
        ).last_hidden_state
        if Mode.DENSE in modes:
            on_device["dense"] = F.normalize(hidden[:, 0], dim=-1).to(store)
        if Mode.SPARSE in modes:
            assert model.sparse_linear is not None
            weights = torch.relu(model.sparse_linear(hidden)).squeeze(-1)
            on_device["sparse_weights"] = weights.float()
        if Mode.COLBERT in modes:
            assert model.colbert_linear is not None
            # Padding positions too: trimmed on the host, so the launch never waits.
            vectors = model.colbert_linear(hidden[:, 1:])
            on_device["colbert"] = F.normalize(vectors, dim=-1).to(store)
        host = {}
        for name, tensor in on_device.items():
            target = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=pin)
            host[name] = target.copy_(tensor, non_blocking=pin)
        event = torch.cuda.Event() if pin else None
        if event is not None:
            event.record()
    pending = PendingBatch(rows, host=host, ids=ids_host, mask=mask_host, model=model)
    if event is None:  # on the CPU (tests): the work is already done
        pending.event = _DoneEvent()  # type: ignore[assignment]
    else:
        pending.event = event
    return pending


class _DoneEvent:
    def synchronize(self) -> None:
        pass


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def encode_with_split(
    run: Callable[[np.ndarray], Out], rows: np.ndarray, empty_cache: Callable[[], None]
) -> list[Out]:
    """Run a batch; on out-of-memory split it in halves and retry, never dropping a row."""
    try:
        return [run(rows)]
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        empty_cache()
        if len(rows) == 1:
            raise RetryableError(
                "out of memory on a single sequence; retry on a device with more free memory "
                "or lower --max-length"
            ) from exc
    half = len(rows) // 2
    return encode_with_split(run, rows[:half], empty_cache) + encode_with_split(
        run, rows[half:], empty_cache
    )
