"""`m3pipe search`: exact (brute-force) hybrid search of queries over an m3pipe output.

Queries are encoded by the index's own model and options (its identity checked), every
document of the index is scored with bge-m3's three scores (pipeline/retrieval/scores.py)
part file after part file, and the best K per query are kept for each run asked for: one
per mode and the weighted hybrid. The hybrid's candidates can be reranked by the
cross-encoder, the passages read back from the index's inputs. Results are one Parquet file.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline.engine.compact_vectors import sign_bits
from pipeline.errors import InputError, OutputUnreadable
from pipeline.inputs.readers.formats import detect_format, read_records
from pipeline.retrieval.index import batch_vectors, document_batches
from pipeline.retrieval.rerank_candidates import rerank_candidates
from pipeline.retrieval.scores import SCORERS, Vectors, hybrid, query_blocks
from pipeline.retrieval.topk import BlockedTopK
from pipeline.storage.finished_output import FinishedOutput
from pipeline.storage.location import Location, open_location
from pipeline.storage.sink import write_shard
from schemas.document import Document
from schemas.options import EncodeOptions, Mode, StorageDtype, VectorForm
from schemas.output import search_results_schema
from schemas.vector_layout import BINARY, decode

if TYPE_CHECKING:
    from pipeline.engine.model import M3Model
    from pipeline.engine.reranker import RerankEngine

# A mode stored as sign bits is scored against the float query ("float": the asymmetric
# form) or the query's own sign bits ("sign": the symmetric form, (D - 2 x Hamming) / D).
# "auto" takes what measured best on the trained proxy (docs/pipeline.md, "Compact
# storage"): sign bits for ColBERT's MaxSim, the float query for dense.
BINARY_QUERY = ("auto", "float", "sign")
AUTO_SIGN_MODES = (Mode.COLBERT,)
HYBRID = "hybrid"
RERANK = "rerank"
RUNS = (*(mode.value for mode in Mode), HYBRID)
# The identity a query encoder must share with the index: its weights and dimensions.
SAME_MODEL = ("model_fingerprint", "model_revision", "dense_dim", "colbert_dim")
MAX_QUERY_PROBLEMS = 5


class SearchError(InputError):
    """The search cannot run as asked (the index, the queries or the options)."""


@dataclass
class SearchRequest:
    index: Location | Path | str
    queries: Location | Path | str
    out: Location | Path | str
    top_k: int = 100
    weights: dict[Mode, float] = field(
        default_factory=lambda: {Mode.DENSE: 0.4, Mode.SPARSE: 0.2, Mode.COLBERT: 0.4}
    )
    runs: tuple[str, ...] = (HYBRID,)
    query_id_field: str = "id"
    query_text_field: str = "text"
    rerank_top_k: int | None = None  # hybrid candidates per query to rerank (default top_k)
    corpus: Sequence[str] = ()  # where the passages to rerank are; default the index's inputs
    # How vectors stored as sign bits are scored (BINARY_QUERY).
    binary_query: str = "auto"


@dataclass
class SearchSummary:
    queries: int
    documents: int  # documents of the index scored against every query
    seconds: float  # scoring the index (queries encoded, before it)
    results: int
    reranked: int = 0

    @property
    def pairs_per_second(self) -> float:
        return self.documents * self.queries / self.seconds if self.seconds > 0 else 0.0


def open_index(target: Location | Path | str) -> FinishedOutput:
    try:
        return FinishedOutput.open(target)
    except OutputUnreadable as exc:
        raise SearchError(f"cannot search {exc}") from None


def plan_modes(index: FinishedOutput, request: SearchRequest) -> tuple[Mode, ...]:
    """The modes to score: those of the runs asked for and those the hybrid weighs."""
    have = {Mode(mode) for mode in index.options.get("modes", [])}
    wanted = {Mode(run) for run in request.runs if run != HYBRID}
    if HYBRID in request.runs:
        weighted = {mode for mode, weight in request.weights.items() if weight > 0}
        if not weighted:
            raise SearchError("the hybrid needs a weight above 0 for some mode")
        wanted |= weighted
    missing = sorted(mode.value for mode in wanted - have)
    if missing:
        raise SearchError(
            f"{index.location} holds no {', '.join(missing)} vectors (it was encoded with "
            f"--modes {','.join(sorted(m.value for m in have))}): give them weight 0"
        )
    return tuple(mode for mode in Mode if mode in wanted)


def check_model(index: FinishedOutput, described: dict[str, object]) -> None:
    old = index.identity
    changed = [
        f"{key} {described.get(key)!r} (the index: {old.get(key)!r})"
        for key in SAME_MODEL
        if old.get(key) != described.get(key)
    ]
    if changed:
        raise SearchError("the query model is not the index's: " + "; ".join(changed))


def read_queries(request: SearchRequest) -> list[Document]:
    """The queries, or SearchError naming the first bad records (a query set is small and
    every query counts: nothing is skipped)."""
    location = open_location(request.queries)
    items = read_records(
        location,
        detect_format(location),
        id_field=request.query_id_field,
        text_field=request.query_text_field,
    )
    queries: list[Document] = []
    problems: list[str] = []
    seen: set[str] = set()
    for item in items:
        query = item.result
        if not isinstance(query, Document):
            problems.append(f"{item.where}: {query.reason}")
        elif query.id in seen:
            problems.append(f"{item.where}: query id {query.id!r} appears twice")
        else:
            seen.add(query.id)
            queries.append(query)
    if problems:
        shown = "; ".join(problems[:MAX_QUERY_PROBLEMS])
        raise SearchError(f"{location}: {len(problems)} bad query record(s): {shown}")
    if not queries:
        raise SearchError(f"{location} holds no queries")
    return queries


def encode_queries(
    model: M3Model, index: FinishedOutput, queries: list[Document], modes: tuple[Mode, ...]
) -> Vectors:
    """The queries through the index's model, at its max_length (truncated), in float32."""
    from pipeline.engine.embedder import EmbedEngine

    max_length = int(index.options.get("max_length", 8192))
    options = EncodeOptions(modes=modes, max_length=max_length, dtype=StorageDtype.FLOAT32)
    table = EmbedEngine(model, options).encode(queries).table.combine_chunks()
    vectors, _ = batch_vectors(table.to_batches()[0], [query.id for query in queries])
    return vectors


def binary_queries(
    index: FinishedOutput, queries: Vectors, modes: tuple[Mode, ...], form: str
) -> Vectors:
    """`queries` with each mode the index stores as sign bits reduced to sign bits too where
    `form` says so (BINARY_QUERY), read back as the index's are (+-1 / sqrt(D))."""
    if form not in BINARY_QUERY:
        raise SearchError(f"--binary-query is one of {', '.join(BINARY_QUERY)}, not {form!r}")
    stored = {
        Mode.DENSE: index.options.get("dense_storage"),
        Mode.COLBERT: index.options.get("colbert_storage"),
    }
    binary = [mode for mode in modes if stored.get(mode) == VectorForm.BINARY.value]
    if not binary and form != "auto":
        raise SearchError(
            f"--binary-query {form}: {index.location} stores no vectors it scores as binary"
        )
    for mode in binary:
        if form == "sign" or (form == "auto" and mode in AUTO_SIGN_MODES):
            floats = getattr(queries, mode.value)
            setattr(queries, mode.value, decode(sign_bits(floats), BINARY, floats.shape[1], None))
    return queries


def best_per_document(scores: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per document (rows starts[i]..starts[i+1]-1) and query: its best row's score and that
    row's index (its chunk)."""
    best = np.maximum.reduceat(scores, starts[:-1], axis=0)
    lengths = np.diff(starts)
    if len(best) == len(scores):
        return best, np.broadcast_to(np.arange(len(scores))[:, None], scores.shape)
    hit = scores == np.repeat(best, lengths, axis=0)
    rows = np.where(hit, np.arange(len(scores))[:, None], -1)
    return best, np.maximum.reduceat(rows, starts[:-1], axis=0)


def score_index(
    index: FinishedOutput,
    queries: Vectors,
    modes: tuple[Mode, ...],
    request: SearchRequest,
) -> tuple[dict[str, BlockedTopK], int]:
    """The best K per query for each run, and the documents scored. The index is read
    once; each batch of it is scored against the queries a block at a time, so memory is
    bounded by the batch and the block, whatever the number of queries (besides the
    results: K per query)."""
    blocks = query_blocks(queries)
    firsts = [first for first, _ in blocks]
    runs = {
        run: BlockedTopK(firsts, len(queries), request.top_k, extras=len(Mode))
        for run in request.runs
    }
    documents = 0
    for batch, starts in document_batches(index, modes):
        check_dimensions(queries, batch, index)
        doc_ids = [batch.ids[start] for start in starts[:-1]]
        documents += len(doc_ids)
        for number, (_, block) in enumerate(blocks):
            by_mode = {mode: SCORERS[mode](block, batch) for mode in modes}
            # (rows, queries, each mode) with NaN for a mode not scored
            components = np.full((len(batch), len(block), len(Mode)), np.nan, dtype=np.float32)
            for column, mode in enumerate(Mode):
                if mode in by_mode:
                    components[:, :, column] = by_mode[mode]
            for run, top in runs.items():
                scores = hybrid(by_mode, request.weights) if run == HYBRID else by_mode[Mode(run)]
                best, rows = best_per_document(scores, starts)
                chosen = np.take_along_axis(components, rows[:, :, None], axis=0)
                top.block(number).add(best, doc_ids, chosen)
    return runs, documents


def check_dimensions(queries: Vectors, batch: Vectors, index: FinishedOutput) -> None:
    """A part whose vectors are not the index's size (damaged, or another model's)."""
    for name in ("dense", "colbert"):
        ours, theirs = getattr(queries, name), getattr(batch, name)
        if ours is not None and theirs is not None and ours.shape[1] != theirs.shape[1]:
            raise SearchError(
                f"{index.location} holds {name} vectors of {theirs.shape[1]} dimensions next to "
                f"{batch.ids[0]!r}; its model gives {ours.shape[1]}"
            )


def results_table(queries: list[Document], runs: dict[str, BlockedTopK],
                  reranked: dict[str, list[tuple[str, float, np.ndarray]]] | None,
                  metadata: dict[str, object]) -> pa.Table:  # fmt: skip
    columns: dict[str, list[object]] = {name: [] for name in search_results_schema().names}

    def add(run: str, query: str, ranked: list[tuple[str, float, np.ndarray]]) -> None:
        for rank, (doc_id, score, parts) in enumerate(ranked, start=1):
            columns["run"].append(run)
            columns["query_id"].append(query)
            columns["rank"].append(rank)
            columns["doc_id"].append(doc_id)
            columns["score"].append(score)
            for mode, value in zip(Mode, parts, strict=True):
                columns[mode.value].append(None if np.isnan(value) else float(value))

    for run, top in runs.items():
        for number, query in enumerate(queries):
            add(run, query.id, top.ranked(number))
    for query_id, ranked in (reranked or {}).items():
        add(RERANK, query_id, ranked)
    return pa.table(columns, schema=search_results_schema(metadata))


def search(
    request: SearchRequest,
    model: M3Model,
    reranker: RerankEngine | None = None,
    index: FinishedOutput | None = None,
) -> SearchSummary:
    """Run `request` with the loaded query `model` (and cross-encoder); write the results.
    `index`: `request.index` already opened (its manifest is then not read again)."""
    index = index or open_index(request.index)
    modes = plan_modes(index, request)
    check_model(index, model.describe())
    queries = read_queries(request)
    vectors = encode_queries(model, index, queries, modes)
    vectors = binary_queries(index, vectors, modes, request.binary_query)
    started = time.perf_counter()
    runs, documents = score_index(index, vectors, modes, request)
    seconds = time.perf_counter() - started
    reranked = None
    if reranker is not None:
        k = request.rerank_top_k or request.top_k
        reranked = rerank_candidates(
            reranker, index, queries, runs[HYBRID], k, list(request.corpus)
        )
    metadata = {
        "index": index.location.uri,
        "model": index.identity.get("model"),
        "weights": {mode.value: weight for mode, weight in request.weights.items()},
        "top_k": request.top_k,
        "exact": True,
        "binary_query": request.binary_query,
    }
    table = results_table(queries, runs, reranked, metadata)
    write_shard(table, request.out)
    return SearchSummary(
        queries=len(queries),
        documents=documents,
        seconds=seconds,
        results=table.num_rows,
        reranked=sum(len(r) for r in (reranked or {}).values()),
    )
