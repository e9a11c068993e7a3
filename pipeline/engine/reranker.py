"""The reranker engine: (query, passage) pairs in, one relevance logit per pair out.

Semantics are FlagEmbedding's FlagReranker (`BaseReranker.compute_score_single_gpu`): the
query is cut to `query_max_length` tokens and the passage to `max_length` tokens, each
without specials; the pair is then built as `<s> query </s></s> passage </s>` with only the
passage truncated to `max_length` in all; the score is the model's single logit, and the
normalised score its sigmoid. Speed comes from batching, not from other maths: pairs are
tokenized in bulk, sorted by length and cut into token-budget batches (as the embedding
engine does), with an out-of-memory split instead of a smaller fixed batch size.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline import __version__
from pipeline.engine import cpu_attention, cuda_attention
from pipeline.engine.batching import (
    DEFAULT_RERANK_BATCH_TOKENS,
    budget_after_oom,
    default_batch_tokens,
    plan_batches,
)
from pipeline.engine.encoder import batch_inputs, encode_with_split, to_host
from pipeline.engine.model import LoadedModel, install_cpu_linear
from pipeline.engine.model_source import locate_model
from pipeline.engine.stats import BatchStats
from pipeline.errors import ModelLoadError
from schemas.output import rerank_schema
from schemas.pair import Pair, RerankOptions


@dataclass(kw_only=True)
class RerankModel(LoadedModel):
    """A loaded cross-encoder: the sequence-classification model, tokenizer and identity."""

    model: torch.nn.Module


def load_reranker(
    spec: str,
    *,
    device: str | None = None,
    precision: str | None = None,
    cache_dir: Path,
    hub_timeout: float = 10.0,
) -> RerankModel:
    """Load a cross-encoder (bge-reranker-v2-m3, or random:SIZE) as FlagReranker does."""
    source = locate_model(
        spec,
        device=device,
        precision=precision,
        cache_dir=cache_dir,
        hub_timeout=hub_timeout,
        reranker=True,
    )
    path = source.path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        # FlagReranker's own loading, without importing FlagEmbedding (see model.m3_parts):
        # AutoTokenizer + AutoModelForSequenceClassification from the same path.
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load reranker from {path}: {exc}") from exc
    labels = int(getattr(model.config, "num_labels", 0))
    if labels != 1:
        raise ModelLoadError(
            f"{path} is not a one-logit cross-encoder (num_labels={labels}); "
            "rerank needs a model like BAAI/bge-reranker-v2-m3"
        )
    model = model.to(device=source.device, dtype=source.dtype).eval()
    if cpu_attention.wanted(source.device, source.dtype):
        cpu_attention.install(model)
    elif cuda_attention.wanted(source.device):
        cuda_attention.install(model)
    install_cpu_linear(model, source.device, source.dtype)
    return RerankModel(model=model, tokenizer=tokenizer, **source.identity())


def tokenize_pairs(
    tokenizer: Any, pairs: Sequence[Pair], options: RerankOptions
) -> list[list[int]]:
    """Each pair's input ids, exactly as FlagReranker builds them."""
    max_length = options.max_length
    queries = tokenizer(
        [p.query for p in pairs],
        add_special_tokens=False,
        max_length=options.effective_query_max_length,
        truncation=True,
    )["input_ids"]
    passages = tokenizer(
        [p.passage for p in pairs], add_special_tokens=False, max_length=max_length, truncation=True
    )["input_ids"]
    legacy = getattr(tokenizer, "prepare_for_model", None)
    if callable(legacy):  # transformers 4: pairs are built from the ids themselves
        return [
            legacy(q, d, truncation="only_second", max_length=max_length, padding=False)[
                "input_ids"
            ]
            for q, d in zip(queries, passages, strict=True)
        ]
    # transformers 5 has no id-level pairing; FlagEmbedding (utils/tokenizer_compat.py) decodes
    # each side with its special tokens kept and tokenizes the text pair. Same here, in bulk.
    decode = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    return tokenizer(
        tokenizer.batch_decode(queries, **decode),
        tokenizer.batch_decode(passages, **decode),
        truncation="only_second",
        max_length=max_length,
        padding=False,
    )["input_ids"]


@dataclass
class RerankStats(BatchStats):
    pairs: int = 0

    @property
    def rows(self) -> int:
        return self.pairs  # one output row per pair

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds else 0.0


@dataclass
class ScoredBatch:
    """A launched batch: its logits on their way to the host (ready once `done` is)."""

    rows: np.ndarray
    host: torch.Tensor  # float32 [rows]
    done: torch.cuda.Event | None = None

    def logits(self) -> np.ndarray:
        if self.done is not None:
            self.done.synchronize()
        return self.host.numpy()


@dataclass
class RerankResult:
    table: pa.Table
    logits: np.ndarray  # float32, in input order
    stats: RerankStats = field(default_factory=RerankStats)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """FlagEmbedding's normalisation, 1 / (1 + exp(-x)), in float64."""
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def ranks(pairs: Sequence[Pair], logits: np.ndarray) -> np.ndarray:
    """1-based rank of each pair among its group (best score first, ties in input order);
    0 for pairs that came without a group."""
    out = np.zeros(len(pairs), dtype=np.int32)
    members: dict[int, list[int]] = {}
    for index, pair in enumerate(pairs):
        if pair.group is not None:
            members.setdefault(pair.group, []).append(index)
    for rows in members.values():
        order = sorted(rows, key=lambda i: (-float(logits[i]), i))
        for rank, index in enumerate(order, start=1):
            out[index] = rank
    return out


class RerankEngine:
    """A loaded cross-encoder plus options; between calls it keeps only its batch budget,
    lowered after an out-of-memory."""

    def __init__(self, model: RerankModel, options: RerankOptions) -> None:
        self.model = model
        self.options = options
        self.batch_tokens = options.batch_tokens or default_batch_tokens(
            model.device.type, DEFAULT_RERANK_BATCH_TOKENS
        )
        self.schema = rerank_schema(self.file_metadata())
        # Held while the batches run: shared by a worker's slots (as EmbedEngine's).
        self.device_gate: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext

    def file_metadata(self) -> dict[str, object]:
        return {
            **self.model.describe(),
            "task": "rerank",
            "m3pipe_version": __version__,
            "max_length": self.options.max_length,
            "query_max_length": self.options.effective_query_max_length,
        }

    def score(self, pairs: Sequence[Pair]) -> RerankResult:
        started = time.perf_counter()
        ids = tokenize_pairs(self.model.tokenizer, pairs, self.options)
        lengths = np.array([len(seq) for seq in ids], dtype=np.int64)
        logits = np.zeros(len(pairs), dtype=np.float32)
        stats = RerankStats(pairs=len(pairs), tokens=int(lengths.sum()))

        def run(rows: np.ndarray) -> ScoredBatch:
            return ScoredBatch(rows, *self._forward([ids[i] for i in rows]))

        def lower_budget(rows: np.ndarray) -> None:
            self.batch_tokens = budget_after_oom(self.batch_tokens, rows, lengths)

        def finish(out: ScoredBatch) -> None:
            logits[out.rows] = out.logits()
            stats.batches += 1
            stats.padded_tokens += len(out.rows) * int(lengths[out.rows].max())

        # Batch k + 1 is launched before batch k's logits are read: the device never waits
        # for the host to read them and pad the next batch (as the embedding engine does).
        in_flight: ScoredBatch | None = None
        with self.device_gate():
            for batch in plan_batches(lengths, self.batch_tokens):
                launched = encode_with_split(run, batch, self._empty_cache, lower_budget)
                stats.oom_splits += len(launched) - 1
                for out in launched:
                    if in_flight is not None:
                        finish(in_flight)
                    in_flight = out
            if in_flight is not None:
                finish(in_flight)
        group_ranks = ranks(pairs, logits)
        table = pa.table(
            {
                "query_id": [p.query_id for p in pairs],
                "doc_id": [p.doc_id for p in pairs],
                "score": logits,
                "score_normalized": sigmoid(logits).astype(np.float32),
                "rank": pa.array(group_ranks, mask=group_ranks == 0, type=pa.int32()),
                "n_tokens": lengths.astype(np.int32),
            },
            schema=self.schema,
        )
        stats.seconds = time.perf_counter() - started
        return RerankResult(table=table, logits=logits, stats=stats)

    def _forward(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Launch a batch: its logits' host copy (float32) and, on CUDA, the event after
        which the copy is there; nothing waits for the device."""
        device = self.model.device
        model = self.model.model
        batch = batch_inputs(sequences, self.model.pad_id, model, device)
        with torch.inference_mode():
            out = model(
                input_ids=batch.ids, attention_mask=batch.forward_mask, return_dict=True,
                **batch.attention,
            )  # fmt: skip
            host = to_host({"logits": out.logits.view(-1).float()}, device)["logits"]
            done = None
            if device.type == "cuda":
                done = torch.cuda.Event()
                done.record()
        return host, done

    def _empty_cache(self) -> None:
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()
