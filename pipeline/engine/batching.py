"""Token-budget batching: length-sorted sequences cut into batches of bounded padded size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_BATCH_TOKENS = {"cpu": 16384, "cuda": 65536}
# Reranking pairs are short (<= 512 tokens by default); on CPU smaller batches stay in cache:
# bench_rerank's sweep on random:small gave 34 pairs/s at 4096 against 32 at 16384.
DEFAULT_RERANK_BATCH_TOKENS = {"cpu": 4096, "cuda": 65536}


# On CUDA the budget follows the device's free memory: a fraction of it over what a token
# of bge-m3's shape holds at the peak of a fp16 forward (hidden states, the feed-forward
# block's intermediate, the heads' outputs, with the caching allocator's slack), within
# bounds: below the floor batches are too small to keep an H100 busy, above the ceiling
# longer batches buy nothing measurable (docs/engine.md).
CUDA_BYTES_PER_TOKEN = 64 << 10
CUDA_MEMORY_SHARE = 0.5  # the rest: weights, the allocator's fragments, the next batch
CUDA_BUDGET_BOUNDS = (16_384, 262_144)


@dataclass(frozen=True)
class DeviceMemory:
    free: int  # bytes the device has free now
    total: int


def default_batch_tokens(
    device_type: str,
    table: dict[str, int] = DEFAULT_BATCH_TOKENS,
    memory: DeviceMemory | None = None,
) -> int:
    """The token budget of a batch: from the device's free memory on CUDA when known,
    else the table's figure for the device type."""
    if device_type == "cuda" and memory is not None:
        return cuda_batch_tokens(memory.free)
    return table.get(device_type, table["cpu"])


def cuda_batch_tokens(free_bytes: int) -> int:
    """A CUDA budget from free memory: CUDA_MEMORY_SHARE of it at CUDA_BYTES_PER_TOKEN a
    token, within CUDA_BUDGET_BOUNDS, rounded down to a multiple of 1,024."""
    low, high = CUDA_BUDGET_BOUNDS
    tokens = int(free_bytes * CUDA_MEMORY_SHARE) // CUDA_BYTES_PER_TOKEN
    return max(low, min(high, tokens // 1024 * 1024))


def share_budget(budget: int, slots: int) -> int:
    """One slot's CUDA budget when `slots` pool processes share a device (each caching
    allocator keeps what its batches used): an equal part, within CUDA_BUDGET_BOUNDS' floor."""
    return max(CUDA_BUDGET_BOUNDS[0], budget // max(1, slots) // 1024 * 1024)


def device_memory(model: Any) -> DeviceMemory | None:
    """Free and total memory of the model's CUDA device; None elsewhere."""
    device = getattr(model, "device", None)
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return DeviceMemory(int(free), int(total))


def budget_after_oom(budget: int, rows: np.ndarray, lengths: np.ndarray) -> int:
    """The budget once a batch of `rows` ran out of memory: below that batch's padded
    tokens (half of them), so later batches of this worker are planned to fit instead of
    failing and splitting again; never below one 512-token sequence."""
    padded = len(rows) * int(np.max(lengths[rows])) if len(rows) else budget
    return max(512, min(budget, padded // 2))


def plan_batches(
    lengths: np.ndarray, budget: int, overhead_tokens: int | None = None
) -> list[np.ndarray]:
    """Indices of `lengths` grouped into batches, longest first.

    Every batch keeps `len(batch) * max(length in batch) <= budget`, except a single sequence
    longer than the budget, which runs alone. Among all contiguous cuts of the length-sorted
    order, this picks the one minimising padded tokens plus `overhead_tokens` per batch (a
    forward pass has a fixed cost, so many tiny batches are not free): an exact dynamic
    programme, vectorised per start position.
    """
    if budget < 1:
        raise ValueError("budget must be positive")
    n = len(lengths)
    if n == 0:
        return []
    if overhead_tokens is None:
        overhead_tokens = max(1, budget // 64)
    order = np.argsort(-np.asarray(lengths), kind="stable")
    sorted_len = np.asarray(lengths, dtype=np.int64)[order]

    best = np.full(n + 1, np.iinfo(np.int64).max, dtype=np.int64)
    best[0] = 0
    cut_from = np.zeros(n + 1, dtype=np.int64)
    for start in range(n):
        width = int(sorted_len[start])  # the longest of any batch starting here
        size = max(1, min(n - start, budget // max(width, 1)))
        ends = np.arange(start + 1, start + size + 1)
        cost = best[start] + (ends - start) * width + overhead_tokens
        better = cost < best[ends]
        best[ends[better]] = cost[better]
        cut_from[ends[better]] = start

    batches: list[np.ndarray] = []
    end = n
    while end > 0:
        start = int(cut_from[end])
        batches.append(order[start:end])
        end = start
    batches.reverse()
    return batches


def padding_efficiency(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Real tokens / padded tokens over a plan (1.0 means no padding at all)."""
    real = int(np.sum(lengths))
    padded = sum(len(b) * int(np.max(lengths[b])) for b in batches)
    return real / padded if padded else 1.0
