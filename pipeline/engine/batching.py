"""Token-budget batching: length-sorted sequences cut into batches of bounded padded size."""

from __future__ import annotations

import numpy as np

DEFAULT_BATCH_TOKENS = {"cpu": 16384, "cuda": 65536}
# Reranking pairs are short (<= 512 tokens by default); on CPU smaller batches stay in cache:
# bench_rerank's sweep on random:small gave 34 pairs/s at 4096 against 32 at 16384.
DEFAULT_RERANK_BATCH_TOKENS = {"cpu": 4096, "cuda": 65536}


def default_batch_tokens(device_type: str, table: dict[str, int] = DEFAULT_BATCH_TOKENS) -> int:
    return table.get(device_type, table["cpu"])


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
