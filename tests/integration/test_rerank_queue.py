"""Reranking through real Redis and real workers, which serve embed jobs too."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.exit_codes import EXIT_OK, EXIT_REJECTS
from pipeline.jobs.keys import worker_key
from pipeline.storage.output_dir import part_entries
from pipeline.testing.corpora import mixed_texts
from tests.integration.conftest import corpus_records, run_cli, write_jsonl


def rerank_records() -> tuple[list[dict], int]:
    """14 queries with 1-13 candidates, 25 flat pairs, 3 bad pairs; and the good pair count."""
    texts = mixed_texts()
    records: list[dict] = []
    for q in range(14):
        candidates = [
            {"doc_id": f"doc-{i}", "passage": f"{texts[(q + i) % len(texts)]} ({q}, {i})"}
            for i in range(1 + q % 13)
        ]
        records.append(
            {
                "query_id": f"q{q}",
                "query": f"{q}: {texts[q % len(texts)][:300]}",
                "candidates": candidates,
            }
        )
    for i in range(25):
        records.append(
            {
                "query_id": f"flat{i % 5}",
                "query": f"{i}: {texts[i % len(texts)][:80]}",
                "doc_id": f"p{i}",
                "passage": f"{i}: {texts[(i + 1) % len(texts)]}",
            }
        )
    good = sum(len(r["candidates"]) for r in records[:14]) + 25
    records += [
        {"query_id": "flat0", "query": "dup", "doc_id": "p0", "passage": "same pair again"},
        {"query_id": "bad", "query": "no passage", "doc_id": "x"},
        {"query_id": "q3", "query": "q", "candidates": [{"doc_id": "y", "passage": ""}]},
    ]
    return records, good


def test_rerank_job_every_pair_scored_once_with_ranks_then_an_embed_job_on_the_same_workers(
    tmp_path, cli_env, workers, store
):
    cli_env["M3PIPE_RERANK_MODEL"] = "random:tiny"
    names = workers.start(2)
    for name in names:  # the embedder is preloaded; the reranker waits for a rerank shard
        record = store.redis.hgetall(worker_key(name))
        assert "embed_load_seconds" in record and "rerank_load_seconds" not in record

    records, good = rerank_records()
    pairs_file = write_jsonl(tmp_path / "pairs.jsonl", records)
    out = tmp_path / "out"
    submitted = run_cli(
        "submit", "--task", "rerank", str(pairs_file), "--out", str(out), "--shard-docs", "20",
        "--max-length", "160", env=cli_env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    assert f"{good} pairs" in submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    waited = run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320)
    assert waited.returncode == EXIT_REJECTS, waited.stderr + workers.log(names[0])[-3000:]

    status = json.loads(run_cli("status", job_id, "--json", env=cli_env).stdout)
    assert (status["task"], status["state"]) == ("rerank", "completed")
    assert (status["documents_done"], status["rows_done"], status["rejected"]) == (good, good, 3)
    assert "pairs" in run_cli("status", job_id, env=cli_env).stdout

    # Every good pair exactly once.
    table = ds.dataset(out, format="parquet").to_table()
    keys = list(zip(table["query_id"].to_pylist(), table["doc_id"].to_pylist(), strict=True))
    expected = [(r["query_id"], c["doc_id"]) for r in records[:14] for c in r["candidates"]]
    expected += [(r["query_id"], r["doc_id"]) for r in records[14:39]]
    assert len(keys) == len(set(keys)) == good and set(keys) == set(expected)

    # Ranks within each query's candidates, best first; each query in one file.
    rows = table.to_pylist()
    for record in records[:14]:
        mine = [r for r in rows if r["query_id"] == record["query_id"]]
        assert sorted(r["rank"] for r in mine) == list(range(1, len(mine) + 1))
        by_rank = [r["score"] for r in sorted(mine, key=lambda r: r["rank"])]
        assert by_rank == sorted(by_rank, reverse=True)
    assert all(r["rank"] is None for r in rows if r["query_id"].startswith("flat"))
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) > 3
    for record in records[:14]:
        holding = [
            p for p in parts if record["query_id"] in pq.read_table(p)["query_id"].to_pylist()
        ]
        assert len(holding) == 1

    # The same scores as the local command on the same input.
    local = tmp_path / "local"
    ran = run_cli(
        "rerank", str(pairs_file), "--out", str(local), "--max-length", "160", "--model",
        "random:tiny", "-q", env=cli_env,
    )  # fmt: skip
    assert ran.returncode == EXIT_REJECTS, ran.stderr
    by_key = {k: s for k, s in zip(keys, table.column("score").to_pylist(), strict=True)}
    local_table = pq.read_table(local)
    local_keys = zip(
        local_table["query_id"].to_pylist(), local_table["doc_id"].to_pylist(), strict=True
    )
    # Logits of ~5 from batches composed differently: the 1e-5 parity bound, relative too
    # (float32 sums in another order moved one by 1.2e-5 once).
    np.testing.assert_allclose(
        [by_key[k] for k in local_keys], local_table["score"].to_numpy(), rtol=1e-5, atol=1e-5
    )

    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["pairs"] == good and manifest["counts"]["input_pairs"] == good + 3
    assert manifest["job"]["task"] == "rerank" and manifest["model"]["task"] == "rerank"
    assert sum(f["pairs"] for f in part_entries(out)) == good
    rejects = [json.loads(line) for line in (out / "_rejects.jsonl").read_text().splitlines()]
    assert sorted(r["query_id"] for r in rejects) == ["bad", "flat0", "q3"]

    # The reranker was loaded on first use, and kept.
    loaded = [store.redis.hget(worker_key(n), "rerank_load_seconds") for n in names]
    assert any(loaded)

    # The same workers take an embed job next: each task's model, one queue (its text in
    # the messages: the other tests send embed shards by reference).
    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_records(30))
    embed = run_cli(
        "submit", str(corpus), "--out", str(tmp_path / "embed"), "--shard-docs", "10",
        "--inline-shards", env=cli_env,
    )  # fmt: skip
    assert embed.returncode == 0, embed.stderr
    embed_id = embed.stdout.strip().splitlines()[-1]
    assert (
        run_cli("wait", embed_id, "--timeout", "300", env=cli_env, timeout=320).returncode
        == EXIT_OK
    )
    assert pq.read_table(tmp_path / "embed").num_rows == 30


def test_submit_rerank_refuses_embedding_flags_and_text_inputs(tmp_path, cli_env):
    pairs_file = write_jsonl(tmp_path / "pairs.jsonl", rerank_records()[0][:3])
    refused = run_cli(
        "submit", "--task", "rerank", str(pairs_file), "--out", str(tmp_path / "o"),
        "--keep-fields", "x", env=cli_env,
    )  # fmt: skip
    assert refused.returncode == 2 and "--keep-fields is for --task embed" in refused.stderr
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("no pair here")
    refused = run_cli(
        "submit", "--task", "rerank", str(texts), "--out", str(tmp_path / "o"), env=cli_env
    )
    assert refused.returncode == 1 and "rerank input is JSONL, CSV or Parquet" in refused.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was registered or written
