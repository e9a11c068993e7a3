"""`m3pipe search` and `m3pipe eval`: bge-m3's scores equal FlagEmbedding's, the streamed
top-K equals scoring everything at once, and the judgements give trec_eval's figures.
Real outputs of random:tiny, read back from Parquet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli.main import main
from pipeline.engine.embedder import EmbedEngine
from pipeline.errors import OutputUnreadable
from pipeline.exit_codes import EXIT_OK, EXIT_USAGE
from pipeline.local.process import process_file
from pipeline.retrieval import exact_search as search_module
from pipeline.retrieval.evaluate import EvalError, evaluate, read_qrels, read_runs
from pipeline.retrieval.exact_search import SearchError, SearchRequest, encode_queries, search
from pipeline.retrieval.index import document_batches
from pipeline.retrieval.scores import colbert_scores, dense_scores, hybrid, sparse_scores
from pipeline.storage.finished_output import FinishedOutput
from pipeline.tasks import task_kind
from pipeline.testing.corpora import mixed_texts
from schemas.document import Document
from schemas.job import Task
from schemas.options import (
    STORAGE_PRESETS,
    EncodeOptions,
    LongDocPolicy,
    Mode,
    StorageDtype,
    StoragePreset,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "search"
ALL_RUNS = ("dense", "sparse", "colbert", "hybrid")
WEIGHTS = {Mode.DENSE: 0.4, Mode.SPARSE: 0.2, Mode.COLBERT: 0.4}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def build_index(tmp_path, tiny, texts, options=None, name="index") -> Path:
    records = [{"id": f"doc-{i:03d}", "text": text} for i, text in enumerate(texts)]
    source = write_jsonl(tmp_path / f"{name}.jsonl", records)
    options = options or EncodeOptions(max_length=256, dtype=StorageDtype.FLOAT32)
    process_file(task_kind(Task.EMBED), source, tmp_path / name, EmbedEngine(tiny, options),
                 shard_items=7)  # fmt: skip
    return tmp_path / name


def corpus() -> list[str]:
    return [text[:400] for text in mixed_texts()] + [f"filler document {i}" for i in range(25)]


def test_scores_equal_flagembeddings_on_the_same_weights(tmp_path, tiny):
    """compute_lexical_matching_score, colbert_score and compute_score's hybrid."""
    from FlagEmbedding import BGEM3FlagModel

    texts = corpus()[:12]
    queries = ["a question about the documents", texts[3][:60], "другой вопрос 🙂"]
    flag = BGEM3FlagModel(str(tiny.path), use_fp16=False, devices="cpu")
    got_q = flag.encode(queries, max_length=256, return_dense=True, return_sparse=True,
                        return_colbert_vecs=True)  # fmt: skip
    got_d = flag.encode(texts, max_length=256, return_dense=True, return_sparse=True,
                        return_colbert_vecs=True)  # fmt: skip

    index = FinishedOutput.open(build_index(tmp_path, tiny, texts))
    modes = tuple(Mode)
    vectors = encode_queries(tiny, index, [Document(id=f"q{i}", text=q)
                                           for i, q in enumerate(queries)], modes)  # fmt: skip
    batches = list(document_batches(index, modes, rows=5))
    dense = np.concatenate([dense_scores(vectors, batch) for batch, _ in batches])
    sparse = np.concatenate([sparse_scores(vectors, batch) for batch, _ in batches])
    colbert = np.concatenate([colbert_scores(vectors, batch) for batch, _ in batches])
    for q in range(len(queries)):
        for d in range(len(texts)):
            lexical = flag.compute_lexical_matching_score(
                got_q["lexical_weights"][q], got_d["lexical_weights"][d]
            )
            assert sparse[d, q] == pytest.approx(lexical, rel=1e-4, abs=1e-6)
            late = float(flag.colbert_score(got_q["colbert_vecs"][q], got_d["colbert_vecs"][d]))
            assert colbert[d, q] == pytest.approx(late, abs=1e-5)
            assert dense[d, q] == pytest.approx(
                float(got_q["dense_vecs"][q] @ got_d["dense_vecs"][d]), abs=1e-5
            )
    # compute_score on (query, passage) pairs, one pair a batch (no padding), our weights.
    pairs = [(queries[0], texts[d]) for d in range(4)]
    weights = [0.4, 0.2, 0.4]
    want = {key: [] for key in ("dense", "sparse", "colbert", "colbert+sparse+dense")}
    for pair in pairs:
        scores = flag.compute_score([pair], batch_size=1, max_query_length=256,
                                    max_passage_length=256,
                                    weights_for_different_modes=weights)  # fmt: skip
        for key in want:
            want[key].append(scores[key][0])
    combined = hybrid({Mode.DENSE: dense, Mode.SPARSE: sparse, Mode.COLBERT: colbert}, WEIGHTS)
    np.testing.assert_allclose(dense[:4, 0], want["dense"], atol=1e-5)
    np.testing.assert_allclose(sparse[:4, 0], want["sparse"], atol=1e-5)
    np.testing.assert_allclose(colbert[:4, 0], want["colbert"], atol=1e-5)
    np.testing.assert_allclose(combined[:4, 0], want["colbert+sparse+dense"], atol=1e-5)


def run_search(tmp_path, tiny, index, queries, **changes):
    fields = {"runs": ALL_RUNS, **changes}
    request = SearchRequest(index=index, queries=queries, out=tmp_path / "results.parquet",
                            **fields)  # fmt: skip
    summary = search(request, tiny)
    return summary, pq.read_table(tmp_path / "results.parquet")


def test_streamed_top_k_equals_scoring_everything(tmp_path, tiny, monkeypatch):
    texts = corpus()
    index = build_index(tmp_path, tiny, texts)
    queries = write_jsonl(tmp_path / "q.jsonl", [
        {"id": "exact", "text": texts[5]}, {"id": "short", "text": "filler document"},
        {"id": "other", "text": "国際 news on shards and vectors"}])  # fmt: skip
    monkeypatch.setattr("pipeline.retrieval.index.BATCH_ROWS", 4)  # many batches, few rows
    monkeypatch.setattr("pipeline.retrieval.scores.QUERY_BLOCK", 2)  # blocks of queries too
    summary, table = run_search(tmp_path, tiny, index, queries, top_k=5)
    assert (summary.queries, summary.documents) == (3, len(texts))

    # Everything scored at once, in one batch, then sorted.
    opened = FinishedOutput.open(index)
    vectors = encode_queries(tiny, opened, search_module.read_queries(
        SearchRequest(index=index, queries=queries, out="unused")), tuple(Mode))  # fmt: skip
    parts = [batch for batch, _ in document_batches(opened, tuple(Mode), rows=10_000)]
    ids = [doc_id for batch in parts for doc_id in batch.ids]
    every = {mode: np.concatenate([scorer(vectors, batch) for batch in parts])
             for mode, scorer in ((Mode.DENSE, dense_scores), (Mode.SPARSE, sparse_scores),
                                  (Mode.COLBERT, colbert_scores))}  # fmt: skip
    every_run = {**{m.value: s for m, s in every.items()}, "hybrid": hybrid(every, WEIGHTS)}
    rows = table.to_pylist()
    for run, scores in every_run.items():
        for q, query in enumerate(["exact", "short", "other"]):
            want = sorted(scores[:, q], reverse=True)[:5]
            got = [r for r in rows if r["run"] == run and r["query_id"] == query]
            assert [r["rank"] for r in got] == [1, 2, 3, 4, 5]
            # The five best scores, each the document's own (documents whose scores tie
            # within float noise may swap at the cut: other batches, other GEMM blocking).
            np.testing.assert_allclose([r["score"] for r in got], want, atol=1e-6)
            for r in got:
                d = ids.index(r["doc_id"])
                assert r["score"] == pytest.approx(float(scores[d, q]), abs=1e-6), (run, query)
                assert r["dense"] == pytest.approx(float(every[Mode.DENSE][d, q]), abs=1e-6)
    # A query that is a document's text finds it first: identical vectors.
    for run in ("dense", "colbert"):
        assert next(r for r in rows if r["run"] == run and r["query_id"] == "exact")[
            "doc_id"] == "doc-005"  # fmt: skip


def reference_rows(index: Path) -> dict[str, list]:
    """Every row of an index read with pyarrow and numpy alone, each form decoded from its
    formula: int8 code x scale; a sign bit as +-1 / sqrt(D)."""
    table = pq.read_table(sorted(index.glob("part-*.parquet")))
    rows = table.to_pylist()
    colbert_meta = table.schema.field("colbert").metadata
    dim = int(colbert_meta[b"m3pipe.dim"])
    kind = colbert_meta[b"m3pipe.vector"].split()[0].decode()
    dense_meta = table.schema.field("dense").metadata or {}
    dense_kind = dense_meta.get(b"m3pipe.vector", b"float").split()[0].decode()

    def vectors(raw: bytes, scale=None) -> np.ndarray:
        if kind == "binary":
            bits = np.unpackbits(np.frombuffer(raw, np.uint8))[:dim]
            return (bits * 2.0 - 1.0) / math.sqrt(dim)
        if kind == "int8":
            return np.frombuffer(raw, np.int8).astype(np.float32) * scale
        return np.frombuffer(raw, "<f4" if kind == "float32" else "<f2").astype(np.float32)

    out: dict[str, list] = {"ids": [], "dense": [], "sparse": [], "colbert": []}
    for row in rows:
        out["ids"].append(row["id"])
        dense = row["dense"]
        if isinstance(dense, bytes) and dense_kind == "int8":  # its codes, a byte each
            out["dense"].append(np.frombuffer(dense, np.int8) * np.float32(row["dense_scale"]))
        elif isinstance(dense, bytes):
            bits = np.unpackbits(np.frombuffer(dense, np.uint8))[: len(dense) * 8]
            out["dense"].append((bits * 2.0 - 1.0) / math.sqrt(len(bits)))
        else:
            out["dense"].append(np.array(dense, np.float32) * row.get("dense_scale", 1.0))
        out["sparse"].append(dict(zip(row["sparse_indices"], row["sparse_values"], strict=True)))
        scales = row.get("colbert_scales") or [None] * len(row["colbert"])
        out["colbert"].append(np.stack([vectors(v, c) for v, c in zip(row["colbert"], scales,
                                                                      strict=True)]))  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("dense_form", "colbert_form", "binary_query"),
    [
        ("int8", "binary", "auto"),  # --storage compact, as search scores it by default
        ("binary", "int8", "auto"),
        ("binary", "binary", "float"),
        ("binary", "binary", "sign"),
    ],
)
def test_search_over_compact_storage_ranks_as_the_formulas_say(
    tmp_path, tiny, dense_form, colbert_form, binary_query
):
    """Each run's top 10 over compact storage (and sparse top 8) equals a reference scorer
    written from the formulas: bge-m3's scores over the decoded vectors, a binary mode
    against the float query or its sign bits as --binary-query says (auto: sign bits for
    ColBERT, the float query for dense)."""
    texts = corpus()
    compact = EncodeOptions(max_length=256, dtype=StorageDtype.FLOAT32, sparse_top_k=8,
                            dense_storage=dense_form, colbert_storage=colbert_form)  # fmt: skip
    index = build_index(tmp_path, tiny, texts, compact)
    exact = build_index(tmp_path, tiny, texts[:3], name="queries-exact")
    queries = write_jsonl(tmp_path / "q.jsonl", [{"id": f"q{i}", "text": texts[i]}
                                                 for i in range(3)])  # fmt: skip
    _, table = run_search(tmp_path, tiny, index, queries, top_k=10, binary_query=binary_query)

    def as_signs(mode: str, form: str) -> bool:
        chosen = binary_query == "sign" or (binary_query == "auto" and mode == "colbert")
        return form == "binary" and chosen

    def signs(x: np.ndarray) -> np.ndarray:  # read as the index's bits are
        return np.where(x > 0, 1.0, -1.0) / math.sqrt(x.shape[-1])

    docs, query_rows = reference_rows(index), reference_rows(exact)
    for q in range(3):
        dense_q, colbert_q = query_rows["dense"][q], query_rows["colbert"][q]
        dense_q = signs(dense_q) if as_signs("dense", dense_form) else dense_q
        colbert_q = signs(colbert_q) if as_signs("colbert", colbert_form) else colbert_q
        scores = {
            "dense": [float(d @ dense_q) for d in docs["dense"]],
            "sparse": [
                sum(w * query_rows["sparse"][q].get(t, 0.0) for t, w in d.items())
                for d in docs["sparse"]
            ],
            "colbert": [float((colbert_q @ d.T).max(axis=1).mean()) for d in docs["colbert"]],
        }
        scores["hybrid"] = [
            (0.4 * a + 0.2 * b + 0.4 * c)
            for a, b, c in zip(scores["dense"], scores["sparse"], scores["colbert"], strict=True)
        ]
        for run, values in scores.items():
            got = [r for r in table.to_pylist() if r["run"] == run and r["query_id"] == f"q{q}"]
            want = sorted(values, reverse=True)[:10]
            np.testing.assert_allclose([r["score"] for r in got], want, rtol=1e-4, atol=1e-5)
            for r in got:
                assert values[docs["ids"].index(r["doc_id"])] == pytest.approx(
                    r["score"], rel=1e-4, abs=1e-5
                ), run
    with pytest.raises(SearchError, match="--binary-query sign"):
        run_search(tmp_path, tiny, exact, queries, binary_query="sign")


def test_a_chunked_index_returns_each_document_once_with_its_best_chunk(tmp_path, tiny):
    options = EncodeOptions(
        max_length=24, long_docs=LongDocPolicy.CHUNK, dtype=StorageDtype.FLOAT32
    )
    texts = corpus()[:15]
    index = build_index(tmp_path, tiny, texts, options)
    assert pq.read_table(sorted(index.glob("part-*"))[0]).num_rows > 7  # chunk rows
    queries = write_jsonl(tmp_path / "q.jsonl", [{"id": "q", "text": texts[2][:50]}])
    _, table = run_search(tmp_path, tiny, index, queries, top_k=15)
    for run in ALL_RUNS:
        ids = [r["doc_id"] for r in table.to_pylist() if r["run"] == run]
        assert sorted(ids) == sorted(f"doc-{i:03d}" for i in range(15)), run
    hybrid_rows = [r for r in table.to_pylist() if r["run"] == "hybrid"]
    for row in hybrid_rows:  # the components are the best chunk's own
        want = (0.4 * row["dense"] + 0.2 * row["sparse"] + 0.4 * row["colbert"]) / 1.0
        assert row["score"] == pytest.approx(want, abs=1e-5)


def test_search_refuses_what_it_cannot_do_honestly(tmp_path, tiny):
    index = build_index(tmp_path, tiny, corpus()[:5],
                        EncodeOptions(max_length=64, modes=("dense", "sparse")))  # fmt: skip
    queries = write_jsonl(tmp_path / "q.jsonl", [{"id": "q", "text": "x"}])
    with pytest.raises(SearchError, match="no colbert vectors"):
        run_search(tmp_path, tiny, index, queries)
    _, table = run_search(tmp_path, tiny, index, queries,
                          weights={Mode.DENSE: 1, Mode.SPARSE: 1, Mode.COLBERT: 0},
                          runs=("dense", "hybrid"))  # fmt: skip
    assert set(table.column("colbert").to_pylist()) == {None}
    manifest = json.loads((index / "_manifest.json").read_text())
    manifest["model"]["model_fingerprint"] = "of-another-model"
    (index / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SearchError, match="model_fingerprint"):
        run_search(tmp_path, tiny, index, queries, runs=("dense",))
    manifest["model"]["model_fingerprint"] = tiny.fingerprint
    (index / "_manifest.json").write_text(json.dumps(manifest))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\nnot json\n')
    with pytest.raises(SearchError, match=r"2 bad query record\(s\).*appears twice"):
        run_search(tmp_path, tiny, index, bad, runs=("dense",))
    with pytest.raises(SearchError, match="not a finished m3pipe output"):
        run_search(tmp_path, tiny, tmp_path, queries)


@pytest.mark.parametrize("storage", ["exact", "compact"])
def test_rerank_orders_the_hybrid_candidates_by_the_cross_encoder(
    tmp_path, tiny, model_cache, storage
):
    """Over exact and compact storage alike (issue 31): the cross-encoder reads the
    passages, not the vectors, and reorders whatever the hybrid found."""
    from pipeline.engine.reranker import RerankEngine, load_reranker
    from schemas.pair import Pair, RerankOptions

    texts = corpus()[:10]
    preset = STORAGE_PRESETS[StoragePreset(storage)]
    options = EncodeOptions.model_validate(
        {"max_length": 256, "dtype": StorageDtype.FLOAT32, **preset}
    )
    index = build_index(tmp_path, tiny, texts, options)
    colbert = pq.read_schema(next(index.glob("part-*.parquet"))).field("colbert")
    assert colbert.metadata[b"m3pipe.vector"].startswith(
        b"binary" if storage == "compact" else b"float32"
    )
    queries = write_jsonl(tmp_path / "q.jsonl", [{"id": "q1", "text": "filler"},
                                                  {"id": "q2", "text": texts[1][:80]}])  # fmt: skip
    engine = RerankEngine(load_reranker("random:tiny", device="cpu", cache_dir=model_cache),
                          RerankOptions())  # fmt: skip
    request = SearchRequest(index=index, queries=queries, out=tmp_path / "r.parquet",
                            top_k=6, rerank_top_k=4)  # fmt: skip
    summary = search(request, tiny, engine)
    rows = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert summary.reranked == 8
    for query, text in (("q1", "filler"), ("q2", texts[1][:80])):
        candidates = [r["doc_id"] for r in rows if r["run"] == "hybrid" and r["query_id"] == query][
            :4
        ]
        reranked = [r for r in rows if r["run"] == "rerank" and r["query_id"] == query]
        assert sorted(r["doc_id"] for r in reranked) == sorted(candidates)
        passages = {f"doc-{i:03d}": t for i, t in enumerate(texts)}
        logits = engine.score([Pair(query_id=query, query=text, doc_id=d, passage=passages[d])
                               for d in candidates]).logits  # fmt: skip
        want = sorted(zip(candidates, logits, strict=True), key=lambda x: -x[1])
        assert [r["doc_id"] for r in reranked] == [d for d, _ in want]
        np.testing.assert_allclose([r["score"] for r in reranked], [s for _, s in want], atol=1e-5)


def test_eval_gives_trec_eval_figures(tmp_path):
    qrels = write_jsonl(tmp_path / "qrels.jsonl", [
        {"query_id": "q1", "doc_id": "a", "relevance": 1},
        {"query_id": "q2", "doc_id": "b", "relevance": 2},
        {"query_id": "q2", "doc_id": "c", "relevance": 0},
        {"query_id": "q3", "doc_id": "z", "relevance": 1}])  # fmt: skip
    results = tmp_path / "results.parquet"
    import pyarrow as pa

    from schemas.output import search_results_schema

    rows = [
        ("hybrid", "q1", 1, "x"),
        ("hybrid", "q1", 2, "a"),  # q1: relevant at rank 2
        ("hybrid", "q2", 1, "b"),  # q2: at rank 1
        ("dense", "q1", 1, "a"),
    ]  # dense has no results for q2 and q3: they count 0
    table = pa.table({"run": [r[0] for r in rows], "query_id": [r[1] for r in rows],
                      "rank": [r[2] for r in rows], "doc_id": [r[3] for r in rows],
                      "score": [-1.0 * r[2] for r in rows], "dense": [None] * 4,
                      "sparse": [None] * 4, "colbert": [None] * 4},
                     schema=search_results_schema())  # fmt: skip
    pq.write_table(table, results)
    evaluation = evaluate(read_qrels(qrels), read_runs(results))
    assert evaluation.queries == 3
    hybrid_run = evaluation.runs["hybrid"]
    assert hybrid_run["RR@10"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert hybrid_run["nDCG@10"] == pytest.approx((1 / math.log2(3) + 1 + 0) / 3)
    assert hybrid_run["R@100"] == pytest.approx(2 / 3)
    assert evaluation.runs["dense"]["RR@10"] == pytest.approx(1 / 3)
    trec = tmp_path / "qrels.txt"
    trec.write_text("q1 0 a 1\nq2 0 b 2\nq2 0 c 0\nq3 0 z 1\n")
    assert evaluate(read_qrels(trec), read_runs(results)).runs == evaluation.runs
    trec.write_text("q1 0 a\nq2 0 b two\n")
    with pytest.raises(EvalError, match="2 bad judgement line"):
        read_qrels(trec)
    with pytest.raises(EvalError, match="not a results file"):
        read_runs(qrels)
    # Judged queries a run has no results for are counted and said (issue 28, item 7).
    assert evaluation.unanswered == {"hybrid": 1, "dense": 2}
    assert "(run dense: no results for 2 of the judged queries, each scored 0)" in (
        evaluation.table()
    )


def test_eval_refuses_judgements_trec_eval_cannot_hold_or_that_contradict(tmp_path):
    trec = tmp_path / "qrels.txt"
    trec.write_text("q1 0 a 99999999999999999999\n")  # once a SystemError in pytrec_eval
    with pytest.raises(EvalError, match="relevance 99999999999999999999 is out of range"):
        read_qrels(trec)
    trec.write_text("q1 0 a 1\nq1 0 a 1\nq1 0 b 2\nq1 0 b 0\n")
    with pytest.raises(
        EvalError, match=r"1 \(query, document\) pair\(s\) judged twice.*b: 2 and 0"
    ):
        read_qrels(trec)
    trec.write_text("q1 0 a 1\nq1 0 a 1\n")  # the same grade twice: once
    assert len(read_qrels(trec)) == 1


def test_search_and_eval_from_the_command_line_on_the_example_set(tmp_path, capsys):
    index, results = tmp_path / "index", tmp_path / "results.parquet"
    corpus_file = EXAMPLES / "corpus.jsonl"
    assert main(["encode", str(corpus_file), "--out", str(index), "--model", "random:tiny",
                 "-q"]) == EXIT_OK  # fmt: skip
    args = ["search", str(index), "--queries", str(EXAMPLES / "queries.jsonl"), "--out",
            str(results), "--runs", "dense,sparse,colbert,hybrid", "--top-k", "10"]  # fmt: skip
    assert main(args) == EXIT_OK
    assert "6 queries x 24 documents" in capsys.readouterr().err
    assert main(args) == EXIT_USAGE  # the results exist: --overwrite to replace them
    assert main([*args, "--weights", "1,0"]) == EXIT_USAGE
    assert main([*args, "--runs", "bm25", "--overwrite"]) == EXIT_USAGE
    figures = tmp_path / "eval.json"
    assert main(["eval", "--qrels", str(EXAMPLES / "qrels.txt"), "--results", str(results),
                 "--json", str(figures)]) == EXIT_OK  # fmt: skip
    printed = capsys.readouterr().out
    assert "nDCG@10" in printed and "(6 judged queries)" in printed
    report = json.loads(figures.read_text())
    assert set(report["runs"]) == set(ALL_RUNS) and report["queries"] == 6


def test_the_readme_search_and_eval_example_prints_what_the_readme_shows(
    tmp_path, capsys, monkeypatch
):
    """README.md's commands, run as written (from a directory holding `examples/`), print
    the table README.md shows, figure for figure (issue 33, item 5)."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    found = re.search(
        r"```bash\n(m3pipe encode examples/search.*?)```\s*```\n(.*?)```", readme, re.S
    )
    assert found is not None, "the example and its table moved in README.md"
    commands, shown = found.groups()
    (tmp_path / "examples").symlink_to(EXAMPLES.parent)
    monkeypatch.chdir(tmp_path)
    for command in commands.replace("\\\n", " ").strip().splitlines():
        assert main(shlex.split(command)[1:]) == EXIT_OK, command
    assert capsys.readouterr().out == shown


def test_a_damaged_or_foreign_part_fails_the_search_clearly(tmp_path, tiny):
    import pyarrow as pa

    index = build_index(tmp_path, tiny, corpus()[:10])
    queries = write_jsonl(tmp_path / "q.jsonl", [{"id": "q", "text": "x"}])
    part = index / "part-00001.parquet"
    table = pq.read_table(part)
    wide = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(table.num_rows * 8, np.float32)), 8)
    pq.write_table(table.set_column(table.schema.get_field_index("dense"), "dense", wide), part)
    with pytest.raises(SearchError, match="dense vectors of 8 dimensions"):
        run_search(tmp_path, tiny, index, queries, runs=("dense",))
    part.write_bytes(b"PAR1 not really")
    with pytest.raises(OutputUnreadable, match=r"part-00001\.parquet is not a readable"):
        run_search(tmp_path, tiny, index, queries)


@pytest.mark.slow
def test_memory_is_bounded_by_query_blocks_whatever_the_query_count(monkeypatch):
    """10^5 short queries over 200 documents (issue 28, item 6): scoring once asked for a
    (query vectors x queries) matrix, 2x10^5 x 10^5 floats (80 GB). Now every array is
    bounded by a block of queries and a batch of documents: the peak (numpy allocations,
    traced) stays far below what one mode's (documents x queries) scores alone would be."""
    import tracemalloc

    from pipeline.retrieval import exact_search as search_module
    from pipeline.retrieval.scores import Vectors

    rng = np.random.default_rng(0)
    dim, queries, documents = 16, 100_000, 200

    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def vectors(rows: int, per_row: int, terms: int) -> Vectors:
        return Vectors(
            ids=[f"r{i}" for i in range(rows)],
            dense=unit(rows),
            sparse_indices=rng.integers(0, 5000, rows * terms).astype(np.int32),
            sparse_values=rng.random(rows * terms, dtype=np.float32),
            sparse_offsets=np.arange(0, rows * terms + 1, terms),
            colbert=unit(rows * per_row),
            colbert_offsets=np.arange(0, rows * per_row + 1, per_row),
        )

    query_vectors = vectors(queries, 2, 2)
    docs = vectors(documents, 4, 4)
    batches = [(docs, np.arange(documents + 1))]
    monkeypatch.setattr(search_module, "document_batches", lambda index, modes: iter(batches))
    monkeypatch.setattr(search_module, "check_dimensions", lambda *args: None)
    # ColBERT alone: the mode whose matrix grew with the queries (the others are blocked
    # by the same loop; test_streamed_top_k_equals_scoring_everything runs all of them).
    request = SearchRequest(index="unused", queries="unused", out="unused", runs=["colbert"],
                            top_k=3)  # fmt: skip
    tracemalloc.start()
    try:
        runs, scored = search_module.score_index(None, query_vectors, (Mode.COLBERT,), request)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scored == documents
    one_mode_scores = documents * queries * 4  # 80 MB: what a single unblocked pass holds
    assert peak < one_mode_scores, f"peak {peak / 1e6:.0f} MB"
    # Every query has its results, best first.
    top = runs["colbert"].ranked(queries - 1)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]
