"""`m3pipe rerank` end to end: pairs in, Parquet of scores and ranks out, read back."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli.main import main
from pipeline.engine.reranker import RerankEngine, load_reranker
from pipeline.exit_codes import EXIT_FAILED, EXIT_REJECTS, EXIT_USAGE
from pipeline.storage.output_dir import part_entries
from pipeline.testing.corpora import mixed_texts
from schemas.pair import Pair, RerankOptions


@pytest.fixture(scope="module")
def reranker(model_cache):
    return load_reranker("random:tiny", device="cpu", precision="fp32", cache_dir=model_cache)


def pair_records() -> list[dict]:
    """Queries with 2-9 candidates each, some flat pairs, and bad records."""
    texts = mixed_texts()
    records: list[dict] = []
    for q in range(6):
        candidates = [
            {"doc_id": f"d{(q * 7 + i) % len(texts)}", "passage": texts[(q * 7 + i) % len(texts)]}
            for i in range(2 + q + (q % 3) * 2)
        ]
        records.append({"query_id": f"q{q}", "query": texts[q][:200], "candidates": candidates})
    records += [
        {"query_id": "f1", "query": "flat query", "doc_id": "d1", "passage": texts[1]},
        {"query_id": "f1", "query": "flat query", "doc_id": "d2", "passage": texts[2]},
        {"query_id": "f1", "query": "flat query", "doc_id": "d1", "passage": "duplicate"},
        {"query_id": "f2", "query": "   ", "doc_id": "d1", "passage": "blank query"},
        {"query_id": "f3", "query": "no passage", "doc_id": "d1"},
    ]
    return records


def run(tmp_path, records, *extra):
    inp = tmp_path / "pairs.jsonl"
    inp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    out = tmp_path / "out"
    args = ["rerank", str(inp), "--out", str(out), "--model", "random:tiny", "-q", *extra]
    return main(args), out


def test_rerank_scores_every_pair_once_ranks_each_query_and_rejects_bad_pairs(tmp_path, reranker):
    records = pair_records()
    code, out = run(tmp_path, records, "--shard-pairs", "10", "--max-length", "128")
    assert code == EXIT_REJECTS
    table = pq.read_table(out)
    groups = [r for r in records if "candidates" in r]
    expected_pairs = [
        Pair(query_id=r["query_id"], query=r["query"], doc_id=c["doc_id"], passage=c["passage"])
        for r in groups
        for c in r["candidates"]
    ] + [Pair.model_validate(r) for r in records[len(groups) : len(groups) + 2]]
    keys = list(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True))
    assert keys == [(p.query_id, p.doc_id) for p in expected_pairs]  # every pair once, in order

    # Scores are the engine's (and so FlagReranker's: tests/pipeline/engine/test_rerank_parity.py).
    scored = RerankEngine(reranker, RerankOptions(max_length=128)).score(expected_pairs)
    np.testing.assert_allclose(table.column("score").to_numpy(), scored.logits, atol=1e-5)
    normalized = 1 / (1 + np.exp(-table.column("score").to_numpy().astype(np.float64)))
    np.testing.assert_allclose(table.column("score_normalized").to_numpy(), normalized, atol=1e-6)

    # Ranks: 1..n within each query's candidates, best score first; flat pairs have none.
    rows = table.to_pylist()
    for record in groups:
        mine = [r for r in rows if r["query_id"] == record["query_id"]]
        assert sorted(r["rank"] for r in mine) == list(range(1, len(mine) + 1))
        by_rank = [r["score"] for r in sorted(mine, key=lambda r: r["rank"])]
        assert by_rank == sorted(by_rank, reverse=True)
    assert [r["rank"] for r in rows if r["query_id"] == "f1"] == [None, None]

    # No query's candidates are split across files, though --shard-pairs (10) cuts some.
    files_of: dict[str, set[str]] = {}
    for part in sorted(out.glob("part-*.parquet")):
        for query_id in pq.read_table(part).column("query_id").to_pylist():
            files_of.setdefault(query_id, set()).add(part.name)
    assert len(files_of["q5"]) == 1 and len(list(out.glob("part-*.parquet"))) > 3
    assert all(len(files_of[r["query_id"]]) == 1 for r in groups)

    rejects = [json.loads(line) for line in (out / "_rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["query_id"], r["reason"][:24]) for r in rejects] == [
        (9, "f1", "duplicate pair (query_id"),
        (10, "f2", "query is empty or whites"),
        (11, "f3", "passage must be a string"),
    ]
    manifest = json.loads((out / "_manifest.json").read_text())
    pairs = len(expected_pairs)
    assert manifest["counts"] == {
        "input_pairs": pairs + 3,
        "pairs": pairs,
        "rows": pairs,
        "rejected": 3,
        "tokens": int(table.column("n_tokens").to_numpy().sum()),
    }
    assert sum(f["pairs"] for f in part_entries(out)) == pairs
    assert manifest["model"]["task"] == "rerank" and manifest["model"]["max_length"] == 128
    assert pq.read_schema(out / "part-00000.parquet").field("rank").nullable


def test_rerank_refuses_bad_flags_and_inputs(tmp_path, capsys):
    code, _ = run(tmp_path, pair_records(), "--shard-pairs", "0")
    assert code == EXIT_USAGE
    code, _ = run(tmp_path, pair_records(), "--max-length", "4")
    assert code == EXIT_USAGE
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("a text holds no pair")
    args = [
        "rerank",
        str(tmp_path / "texts"),
        "--out",
        str(tmp_path / "o"),
        "--model",
        "random:tiny",
    ]
    assert main(args) == EXIT_FAILED
    assert "rerank input is JSONL, CSV or Parquet" in capsys.readouterr().err
    (tmp_path / "pairs.csv").write_text("query_id,query,doc\nq,a,b\n")
    args = [
        "rerank",
        str(tmp_path / "pairs.csv"),
        "--out",
        str(tmp_path / "c"),
        "--model",
        "random:tiny",
    ]
    assert main(args) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "no column 'doc_id'" in err and "rerank input has query_id, query, doc_id" in err
    code, _ = run(tmp_path, [])  # empty file
    assert code == EXIT_FAILED
    assert "holds no records" in capsys.readouterr().err


def test_locally_a_query_larger_than_a_shard_is_scored_in_a_shard_of_its_own(
    tmp_path, monkeypatch, reranker
):
    # No queue message to fit: a unit over the byte bound forms its own shard, never a reject.
    import pipeline.local.process as process

    monkeypatch.setattr(process, "SHARD_MAX_BYTES", 2000)
    big = {"query_id": "big", "query": "q", "candidates": [
        {"doc_id": f"b{i}", "passage": "word " * 100} for i in range(6)
    ]}  # fmt: skip
    small = {"query_id": "small", "query": "q", "doc_id": "s", "passage": "short"}
    code, out = run(tmp_path, [small, big, small | {"doc_id": "t"}])
    assert code == 0
    entries = part_entries(out)
    assert [f["pairs"] for f in entries] == [1, 6, 1]  # the 3 KB group alone
    ranks = pq.read_table(out / entries[1]["name"])["rank"].to_pylist()
    assert sorted(ranks) == [1, 2, 3, 4, 5, 6]
    assert (out / "_rejects.jsonl").read_text() == ""
