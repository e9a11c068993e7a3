"""The best K documents per query, kept while the index streams by: (queries x K) arrays,
merged with each batch's own best K in numpy. Memory is K per query, whatever the index."""

from __future__ import annotations

import numpy as np


class TopK:
    """Per query, the K highest `score` seen and what came with them (`extras` columns)."""

    def __init__(self, queries: int, k: int, extras: int = 0) -> None:
        self.k = k
        self.scores = np.full((queries, 0), -np.inf, dtype=np.float32)
        self.ids = np.empty((queries, 0), dtype=object)
        self.extras = np.zeros((queries, 0, extras), dtype=np.float32)

    def add(self, scores: np.ndarray, ids: list[str], extras: np.ndarray | None = None) -> None:
        """`scores`: (documents, queries); `extras`: (documents, queries, columns)."""
        scores = scores.T  # (queries, documents)
        if extras is None:
            extras = np.zeros((*scores.shape, self.extras.shape[2]), dtype=np.float32)
        else:
            extras = extras.transpose(1, 0, 2)
        names = np.empty(len(ids), dtype=object)
        names[:] = ids
        if scores.shape[1] > self.k:  # the batch's own best K first: the merge stays small
            best = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
            scores = np.take_along_axis(scores, best, axis=1)
            extras = np.take_along_axis(extras, best[:, :, None], axis=1)
            chosen = names[best]
        else:
            chosen = np.broadcast_to(names, scores.shape)
        scores = np.concatenate([self.scores, scores], axis=1)
        ids_all = np.concatenate([self.ids, chosen], axis=1)
        extras = np.concatenate([self.extras, extras], axis=1)
        if scores.shape[1] > self.k:
            keep = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
            scores = np.take_along_axis(scores, keep, axis=1)
            ids_all = np.take_along_axis(ids_all, keep, axis=1)
            extras = np.take_along_axis(extras, keep[:, :, None], axis=1)
        self.scores, self.ids, self.extras = scores, ids_all, extras

    def ranked(self, query: int) -> list[tuple[str, float, np.ndarray]]:
        """Query `query`'s results, best first (ties: by id, so runs are reproducible)."""
        order = sorted(
            range(self.scores.shape[1]),
            key=lambda i: (-float(self.scores[query, i]), str(self.ids[query, i])),
        )
        return [
            (str(self.ids[query, i]), float(self.scores[query, i]), self.extras[query, i])
            for i in order
            if np.isfinite(self.scores[query, i])
        ]


class BlockedTopK:
    """TopK for queries scored in blocks (pipeline/retrieval/scores.query_blocks): one TopK
    per block, each fed with its block's scores; read back by query number."""

    def __init__(self, firsts: list[int], queries: int, k: int, extras: int = 0) -> None:
        self.firsts = firsts
        ends = [*firsts[1:], queries]
        pairs = zip(firsts, ends, strict=True)
        self.blocks = [TopK(end - first, k, extras) for first, end in pairs]

    def block(self, number: int) -> TopK:
        return self.blocks[number]

    def ranked(self, query: int) -> list[tuple[str, float, np.ndarray]]:
        number = int(np.searchsorted(self.firsts, query, side="right")) - 1
        return self.blocks[number].ranked(query - self.firsts[number])
