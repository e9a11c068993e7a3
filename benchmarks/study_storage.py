"""What each compact form of the vectors costs in retrieval quality, on trained weights.

Encodes an offline retrieval set (benchmarks/cloze_set.py: stdlib docstrings, inverse-cloze
queries) once with m3pipe's engine in fp32 on the trained proxy (benchmarks/proxy_model.py:
all-MiniLM-L6-v2 in bge-m3's layout, random ColBERT head, sparse head fitted to IDF), then
scores every query against every passage with each stored form of the documents (queries
stay float, as `m3pipe search` encodes them):

  dense    float32, float16 (today's default storage, the reference), int8 (a scale per
           vector), binary (sign bits: float query x signs, and signs x signs); on the
           proxy also "dense-mean", the same forms of MiniLM's trained sentence embedding
           (the mean of its token states: bge-m3's [CLS] readout is untrained in MiniLM)
  colbert  float16 (the reference), int8, binary (both ways), token pooling x2 and x3, and
           pooling x2 with int8 or binary; MaxSim as bge-m3 scores it
  sparse   every term (the reference), the top 64/32/16 terms, weights >= 0.1

For each: MRR@10 and nDCG@10 (ir_measures), their ratio to the reference, the mean overlap
of the top 10 with the reference's, and the bytes a document vector or token takes. Pooling's
cost (Ward clustering per document) is timed. On random weights the same figures mislead
(issue 31): pass --model random:full to see by how much, and say which it was.

    python -m benchmarks.study_storage                         # the proxy, 1000 x 200
    python -m benchmarks.study_storage --passages 300 --queries 60 --model random:small
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cloze_set import ClozeSet, cloze_set
from benchmarks.proxy_model import fit_sparse_head, proxy_model
from benchmarks.report import run_facts, save
from pipeline.engine import compact_vectors as cv

TOP = 100  # results kept a query for the measures


def encode(model: Any, texts: dict[str, str], max_length: int) -> dict[str, Any]:
    """Dense [n, D], sparse (indices, values) per text, ColBERT [n_i, D] per text, fp32."""
    from pipeline.engine.embedder import EmbedEngine
    from schemas.document import Document
    from schemas.options import EncodeOptions
    from schemas.vector_layout import colbert_rows

    options = EncodeOptions(max_length=max_length, dtype="float32")
    docs = [Document(id=key, text=text) for key, text in texts.items()]
    table = EmbedEngine(model, options).encode(docs).table
    assert table.column("id").to_pylist() == list(texts)
    dense = table.column("dense").combine_chunks().flatten().to_numpy().reshape(len(docs), -1)
    sparse = list(
        zip(
            table.column("sparse_indices").to_pylist(),
            table.column("sparse_values").to_pylist(),
            strict=True,
        )
    )
    colbert = colbert_rows(table.column("colbert"), table.schema.field("colbert"))
    return {
        "dense": dense.astype(np.float32),
        "sparse": sparse,
        "colbert": [np.asarray(c, np.float32) for c in colbert],
    }


def mean_pooled(model_dir: Path, texts: dict[str, str], max_length: int) -> np.ndarray:
    """[n, D] L2-normalised means of the encoder's token states: all-MiniLM-L6-v2's own
    sentence embedding, the dense vector its training made (bge-m3's dense is the [CLS]
    state, which MiniLM was not trained to make)."""
    import torch
    from transformers import AutoTokenizer, XLMRobertaModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = XLMRobertaModel.from_pretrained(model_dir).eval()
    values = list(texts.values())
    out = []
    with torch.inference_mode():
        for start in range(0, len(values), 32):
            batch = tokenizer(
                values[start : start + 32],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            mask = batch["attention_mask"].unsqueeze(-1).float()
            states = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            mean = (states.last_hidden_state * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
    return np.concatenate(out)


def maxsim(queries: list[np.ndarray], docs: list[np.ndarray]) -> np.ndarray:
    """[queries, docs] of bge-m3's ColBERT score: the mean over query tokens of the best
    dot product with any of the document's tokens."""
    tokens = np.concatenate(docs)
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    scores = np.empty((len(queries), len(docs)), np.float32)
    for row, query in enumerate(queries):
        best = np.maximum.reduceat(query @ tokens.T, starts, axis=1)
        scores[row] = best.sum(axis=0) / len(query)
    return scores


def sparse_matrix(entries: list[tuple[list[int], list[float]]], vocab: int) -> Any:
    from scipy.sparse import csr_matrix

    indptr = np.cumsum([0] + [len(i) for i, _ in entries])
    indices = np.fromiter((t for i, _ in entries for t in i), np.int64, int(indptr[-1]))
    values = np.fromiter((w for _, v in entries for w in v), np.float32, int(indptr[-1]))
    return csr_matrix((values, indices, indptr), shape=(len(entries), vocab))


def ranked(scores: np.ndarray, query_ids: list[str], doc_ids: list[str]) -> dict[str, list[str]]:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP]
    return {q: [doc_ids[j] for j in top[i]] for i, q in enumerate(query_ids)}


def measure(run: dict[str, list[str]], relevant: dict[str, str]) -> dict[str, float]:
    import ir_measures
    from ir_measures import RR, nDCG

    qrels = [ir_measures.Qrel(q, d, 1) for q, d in relevant.items()]
    scored = [
        ir_measures.ScoredDoc(q, d, float(TOP - rank))
        for q, docs in run.items()
        for rank, d in enumerate(docs)
    ]
    found = ir_measures.calc_aggregate([RR @ 10, nDCG @ 10], qrels, scored)
    return {"mrr@10": round(found[RR @ 10], 4), "ndcg@10": round(found[nDCG @ 10], 4)}


def overlap(run: dict[str, list[str]], reference: dict[str, list[str]]) -> float:
    return round(
        float(np.mean([len(set(run[q][:10]) & set(reference[q][:10])) / 10 for q in run])), 4
    )


def family(
    name: str,
    forms: dict[str, tuple[Callable[[], np.ndarray], float]],
    reference: str,
    cloze: ClozeSet,
) -> dict[str, dict]:
    """Each form's measures, against the reference form's; `forms`: name -> (scores, bytes)."""
    query_ids, doc_ids = list(cloze.queries), list(cloze.passages)
    runs, figures = {}, {}
    for form, (scores, size) in forms.items():
        runs[form] = ranked(scores(), query_ids, doc_ids)
        figures[form] = {**measure(runs[form], cloze.relevant), "bytes": round(size, 1)}
    base = figures[reference]
    for form, figure in figures.items():
        figure["mrr_ratio"] = round(figure["mrr@10"] / base["mrr@10"], 4)
        figure["ndcg_ratio"] = round(figure["ndcg@10"] / base["ndcg@10"], 4)
        figure["top10_overlap"] = overlap(runs[form], runs[reference])
        figure["bytes_ratio"] = round(figure["bytes"] / base["bytes"], 4)
        print(f"{name:>8} {form:<22} {figure}", flush=True)
    return figures


def dense_forms(q: np.ndarray, d: np.ndarray) -> dict[str, tuple[Callable[[], np.ndarray], float]]:
    dim = d.shape[1]
    codes, scales = cv.int8_per_vector(d)
    signs = cv.from_sign_bits(cv.sign_bits(d), dim)
    q_signs = cv.from_sign_bits(cv.sign_bits(q), dim)
    return {
        "float32": (lambda: q @ d.T, 4 * dim),
        "float16": (lambda: q @ d.astype(np.float16).astype(np.float32).T, 2 * dim),
        "int8": (lambda: q @ cv.from_int8(codes, scales).T, dim + 4),
        "binary": (lambda: q @ signs.T, dim / 8),
        "binary-hamming": (lambda: q_signs @ signs.T, dim / 8),
    }


def colbert_forms(
    q: list[np.ndarray], d: list[np.ndarray], timings: dict[str, float]
) -> dict[str, tuple[Callable[[], np.ndarray], float]]:
    dim = d[0].shape[1]
    tokens = sum(len(x) for x in d)

    def pooled(factor: int) -> list[np.ndarray]:
        started = time.process_time()
        out = [cv.pool_tokens(x, factor) for x in d]
        timings[f"pool x{factor} cpu_ms_per_document"] = round(
            (time.process_time() - started) * 1000 / len(d), 3
        )
        return out

    def int8(docs: list[np.ndarray]) -> list[np.ndarray]:
        return [cv.from_int8(*cv.int8_per_vector(x)) for x in docs]

    def signs(docs: list[np.ndarray]) -> list[np.ndarray]:
        return [cv.from_sign_bits(cv.sign_bits(x), dim) for x in docs]

    pool2, pool3 = pooled(2), pooled(3)
    kept2 = sum(len(x) for x in pool2) / tokens
    kept3 = sum(len(x) for x in pool3) / tokens
    fp16 = [x.astype(np.float16).astype(np.float32) for x in d]
    return {
        "float16": (lambda: maxsim(q, fp16), 2 * dim),
        "int8": (lambda: maxsim(q, int8(d)), dim + 4),
        "binary": (lambda: maxsim(q, signs(d)), dim / 8),
        "binary-hamming": (lambda: maxsim(signs(q), signs(d)), dim / 8),
        "pool2": (
            lambda: maxsim(q, [x.astype(np.float16).astype(np.float32) for x in pool2]),
            2 * dim * kept2,
        ),
        "pool3": (
            lambda: maxsim(q, [x.astype(np.float16).astype(np.float32) for x in pool3]),
            2 * dim * kept3,
        ),
        "pool2+int8": (lambda: maxsim(q, int8(pool2)), (dim + 4) * kept2),
        "pool2+binary": (lambda: maxsim(q, signs(pool2)), dim / 8 * kept2),
    }


def sparse_forms(
    q: list[tuple[list[int], list[float]]], d: list[tuple[list[int], list[float]]], vocab: int
) -> dict[str, tuple[Callable[[], np.ndarray], float]]:
    queries = sparse_matrix(q, vocab)

    def kept(keep: Callable[[list[int], list[float]], list[int]]) -> tuple[Callable, float]:
        entries = []
        for indices, values in d:
            chosen = keep(indices, values)
            entries.append(([indices[i] for i in chosen], [values[i] for i in chosen]))
        terms = np.mean([len(i) for i, _ in entries])
        docs = sparse_matrix(entries, vocab)
        return (lambda: (queries @ docs.T).toarray()), 8 * float(terms)  # int32 + float32

    def top(k: int) -> Callable[[list[int], list[float]], list[int]]:
        return lambda _, values: sorted(np.argsort(values)[::-1][:k].tolist())

    return {
        "all": kept(lambda indices, _: list(range(len(indices)))),
        "top64": kept(top(64)),
        "top32": kept(top(32)),
        "top16": kept(top(16)),
        "weight>=0.1": kept(lambda _, values: [i for i, v in enumerate(values) if v >= 0.1]),
    }


def hybrid_forms(
    q: dict[str, Any], d: dict[str, Any]
) -> dict[str, tuple[Callable[[], np.ndarray], float]]:
    """What `m3pipe search` ranks by, dense and ColBERT weighed alike (its 0.4 and 0.4),
    with each storage preset's forms, decoded as m3pipe's readers do (a sign bit as +-1 /
    sqrt(D), so the modes keep the scales the weights assume). `q`/`d`: "dense" the trained
    sentence vector where there is one, "colbert". Sparse is left out: the proxy's fitted
    head scores on another scale (IDF weights), and a weighted sum with it ranked as sparse
    alone. Bytes: a document's dense and ColBERT vectors at this set's lengths."""
    dim, colbert_dim = d["dense"].shape[1], d["colbert"][0].shape[1]
    per_doc = sum(len(x) for x in d["colbert"]) / len(d["colbert"])

    def signs(x: np.ndarray) -> np.ndarray:
        return cv.from_sign_bits(cv.sign_bits(x), x.shape[1]) / np.float32(np.sqrt(x.shape[1]))

    def int8(x: np.ndarray) -> np.ndarray:
        return cv.from_int8(*cv.int8_per_vector(x))

    def fp16(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float16).astype(np.float32)

    def preset(
        dense: Callable[[np.ndarray], np.ndarray],
        colbert: Callable[[np.ndarray], np.ndarray],
        query: Callable[[np.ndarray], np.ndarray] = lambda x: x,
        docs: list[np.ndarray] = d["colbert"],
    ) -> Callable[[], np.ndarray]:
        def scores() -> np.ndarray:
            dense_scores = q["dense"] @ dense(d["dense"]).T
            colbert_scores = maxsim([query(x) for x in q["colbert"]], [colbert(x) for x in docs])
            return 0.5 * dense_scores + 0.5 * colbert_scores

        return scores

    pool2 = [cv.pool_tokens(x, 2) for x in d["colbert"]]
    pooled = sum(len(x) for x in pool2) / len(pool2)
    int8_dense, binary_colbert = dim + 4, colbert_dim / 8 * per_doc
    return {
        "exact (float16)": (preset(fp16, fp16), 2 * dim + 2 * colbert_dim * per_doc),
        "int8 dense + int8 colbert": (preset(int8, int8), int8_dense + (colbert_dim + 4) * per_doc),
        "compact: int8 dense + binary colbert, float query": (
            preset(int8, signs),
            int8_dense + binary_colbert,
        ),
        "compact, ColBERT query as sign bits (search default)": (
            preset(int8, signs, query=signs),
            int8_dense + binary_colbert,
        ),
        "int8 dense + pool2 int8 colbert": (
            preset(int8, int8, docs=pool2),
            int8_dense + (colbert_dim + 4) * pooled,
        ),
        "binary dense + binary colbert": (preset(signs, signs), dim / 8 + binary_colbert),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="proxy", help="proxy (trained), or any model spec")
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from pipeline.engine.model import load_model

    cache = Path(os.environ.get("M3PIPE_CACHE_DIR", "~/.cache/m3pipe")).expanduser()
    cloze = cloze_set(args.passages, args.queries)
    spec, encoder = args.model, args.model
    if args.model == "proxy":
        base = proxy_model(cache)
        fitted = base.with_name(base.name + "-idf-head")
        if not fitted.exists():  # the sparse head fitted to IDF over this set's passages
            fit_sparse_head(base, list(cloze.passages.values()), fitted)
        spec, encoder = str(fitted), "all-MiniLM-L6-v2 (trained), bge-m3 heads: proxy"
    model = load_model(spec, device="cpu", precision="fp32", cache_dir=cache)
    started = time.perf_counter()
    docs = encode(model, cloze.passages, args.max_length)
    queries = encode(model, cloze.queries, args.max_length)
    encode_seconds = time.perf_counter() - started
    timings: dict[str, float] = {}
    vocab = len(model.tokenizer)
    report = {
        **run_facts(),
        "encoder": encoder,
        "trained": args.model == "proxy",
        "retrieval_set": {
            "passages": len(cloze.passages),
            "queries": len(cloze.queries),
            "kind": "inverse cloze over Python's stdlib docstrings",
            "python_version": cloze.python_version,
            "max_length": args.max_length,
            "passage_tokens_mean": round(float(np.mean([len(c) + 1 for c in docs["colbert"]])), 1),
        },
        "encode_seconds": round(encode_seconds, 1),
        "dense": family("dense", dense_forms(queries["dense"], docs["dense"]), "float16", cloze),
        "colbert": family(
            "colbert", colbert_forms(queries["colbert"], docs["colbert"], timings), "float16", cloze
        ),
        "sparse": family(
            "sparse", sparse_forms(queries["sparse"], docs["sparse"], vocab), "all", cloze
        ),
    }
    if args.model == "proxy":  # the trained dense vector, stored in each form
        pooled_docs = mean_pooled(Path(spec), cloze.passages, args.max_length)
        pooled_queries = mean_pooled(Path(spec), cloze.queries, args.max_length)
        report["dense-mean"] = family(
            "dense-mean", dense_forms(pooled_queries, pooled_docs), "float16", cloze
        )
        queries["dense"], docs["dense"] = pooled_queries, pooled_docs
    report["hybrid"] = family("hybrid", hybrid_forms(queries, docs), "exact (float16)", cloze)
    report["hybrid_note"] = (
        "0.5 dense + 0.5 colbert; dense: the trained mean-pooled vector on the proxy"
    )
    report |= {
        "timings": timings,
        "bytes_note": "dense: per document vector; colbert: per token of the document "
        "(pooled forms: per original token); sparse: per document (int32 id + float32 weight); "
        "hybrid: per document, dense and colbert",
    }
    name = "proxy-minilm" if args.model == "proxy" else args.model
    save(report, "storage", "cpu", name, args.out)


if __name__ == "__main__":
    main()
