"""Reranking a search's hybrid candidates with the cross-encoder (bge-reranker-v2-m3).

The index holds vectors, not text: the candidates' passages are read back from the index's
inputs (or `--corpus`), streamed, keeping only the texts of candidates (at most queries x K).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.inputs.readers.formats import detect_format, read_records
from pipeline.retrieval.topk import BlockedTopK
from pipeline.storage.finished_output import FinishedOutput
from pipeline.storage.location import open_location
from schemas.document import Document
from schemas.pair import Pair

if TYPE_CHECKING:
    from pipeline.engine.reranker import RerankEngine

Ranked = list[tuple[str, float, np.ndarray]]


def passages(index: FinishedOutput, sources: list[str], wanted: set[str]) -> dict[str, str]:
    """The text of each wanted document id, read from `sources` as the index read them."""
    job = index.manifest["job"]
    found: dict[str, str] = {}
    for source in sources:
        location = open_location(source)
        records = read_records(
            location,
            detect_format(location, str(job.get("input_format", "auto"))),
            id_field=str(job.get("id_field", "id")),
            text_field=str(job.get("text_field", "text")),
        )
        for item in records:
            doc = item.result
            if isinstance(doc, Document) and doc.id in wanted and doc.id not in found:
                found[doc.id] = doc.text
                if len(found) == len(wanted):
                    return found
    return found


def rerank_candidates(
    engine: RerankEngine,
    index: FinishedOutput,
    queries: list[Document],
    candidates: BlockedTopK,
    k: int,
    corpus: list[str],
) -> dict[str, Ranked]:
    """Per query, its best `k` hybrid candidates ordered by the cross-encoder's logit (each
    with the hybrid's component scores), their texts read from `corpus` (default: the
    index's inputs). A candidate whose text is not found is left out."""
    lists = [candidates.ranked(number)[:k] for number in range(len(queries))]
    wanted = {doc_id for ranked in lists for doc_id, _, _ in ranked}
    texts = passages(index, corpus or index.inputs, wanted)
    pairs: list[Pair] = []
    parts: list[np.ndarray] = []
    for group, (query, ranked) in enumerate(zip(queries, lists, strict=True)):
        for doc_id, _, components in ranked:
            if doc_id in texts:
                pairs.append(Pair(query_id=query.id, query=query.text, doc_id=doc_id,
                                  passage=texts[doc_id], group=group))  # fmt: skip
                parts.append(components)
    logits = engine.score(pairs).logits if pairs else np.zeros(0, np.float32)
    reranked: dict[str, Ranked] = {query.id: [] for query in queries}
    for pair, logit, components in zip(pairs, logits, parts, strict=True):
        reranked[pair.query_id].append((pair.doc_id, float(logit), components))
    for ranked in reranked.values():
        ranked.sort(key=lambda entry: (-entry[1], entry[0]))
    return reranked
