"""End to end on real Redis and real worker processes: submit -> workers -> Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.cli.main import main
from pipeline.exit_codes import EXIT_REJECTS
from pipeline.jobs.resume import read_shard_file
from schemas.vector_layout import colbert_vectors
from tests.integration.conftest import corpus_records, run_cli, write_jsonl

VECTOR_COLUMNS = ("dense", "sparse_indices", "sparse_values", "colbert")


def read_output(out: Path):
    return ds.dataset(out, format="parquet").to_table().sort_by("id")


def assert_same_vectors(left, right) -> None:
    assert left.column("id").to_pylist() == right.column("id").to_pylist()
    assert left.column("n_tokens").equals(right.column("n_tokens"))
    assert left.column("sparse_indices").equals(right.column("sparse_indices"))
    for name in ("dense", "sparse_values"):
        a = np.asarray(left.column(name).combine_chunks().flatten(), dtype=np.float32)
        b = np.asarray(right.column(name).combine_chunks().flatten(), dtype=np.float32)
        np.testing.assert_allclose(a, b, atol=2e-3)
    a = colbert_vectors(left.column("colbert"), left.schema.field("colbert"))[1]
    b = colbert_vectors(right.column("colbert"), right.schema.field("colbert"))[1]
    np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)


def test_submit_two_workers_every_id_once_and_same_vectors_as_encode(
    tmp_path, cli_env, workers, store
):
    records = [{**r, "lang": "xx" if i % 2 else None} for i, r in enumerate(corpus_records(300))]
    bad = [{"id": "no-text"}, {"id": "doc-00001", "text": "duplicate id"}, "not an object"]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records + bad)
    names = workers.start(2)

    submitted = run_cli(
        "submit", str(corpus), "--out", str(tmp_path / "out"), "--shard-docs", "40",
        "--keep-fields", "lang", env=cli_env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert store.exists(job_id)

    waited = run_cli("wait", job_id, "--timeout", "600", env=cli_env, timeout=620)
    assert waited.returncode == EXIT_REJECTS, waited.stderr + workers.log(names[0])[-3000:]
    status = json.loads(run_cli("status", job_id, "--watch", "--json", env=cli_env).stdout)
    assert status["state"] == "completed"
    assert status["shards"] == {
        "total": 8, "queued": 0, "running": 0, "done": 8, "failed": 0, "cancelled": 0
    }  # fmt: skip
    assert (status["documents_done"], status["rejected"], status["input_records"]) == (300, 3, 303)

    out = tmp_path / "out"
    table = read_output(out)
    ids = table.column("id").to_pylist()
    assert ids == sorted(r["id"] for r in records)  # each input id exactly once
    assert table.column("lang").to_pylist() == [r["lang"] for r in records]
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [
        f"part-{i:05d}.parquet" for i in range(8)
    ]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["input_records"] == 303
    assert manifest["counts"]["rows"] + manifest["counts"]["rejected"] == 303
    assert manifest["model"]["model"] == "random:tiny"
    rejects = [json.loads(line) for line in (out / "_rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [301, 302, 303]
    # Both workers took shards (each holds at most one at a time).
    used = {read_shard_file(part).facts["worker"] for part in out.glob("part-*.parquet")}
    assert used == set(names)

    # The same input through `m3pipe encode` (same shard size, so the same batches).
    encoded = tmp_path / "encoded"
    code = main(
        ["encode", str(corpus), "--out", str(encoded), "--model", "random:tiny",
         "--shard-docs", "40", "--device", "cpu", "--keep-fields", "lang", "-q"]
    )  # fmt: skip
    assert code == EXIT_REJECTS
    assert_same_vectors(table, read_output(encoded))
    assert (
        pq.read_schema(out / "part-00000.parquet").names
        == pq.read_schema(encoded / "part-00000.parquet").names
    )


def test_status_jobs_and_cancel(tmp_path, cli_env, store):
    """Without workers: a job stays queued, shows up in `jobs`, and cancels."""
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(30))
    submitted = run_cli(
        "submit", str(corpus), "--out", str(tmp_path / "out"), "--shard-docs", "10",
        env=cli_env,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    status = json.loads(run_cli("status", job_id, "--json", env=cli_env).stdout)
    assert status["state"] == "queued"
    assert status["shards"]["queued"] == 3 and status["shards"]["total"] == 3
    human = run_cli("status", job_id, env=cli_env).stdout
    assert f"job {job_id}: queued" in human and "0/3 done" in human
    listing = run_cli("jobs", env=cli_env).stdout
    assert job_id in listing
    assert run_cli("wait", job_id, "--timeout", "0.5", env=cli_env).returncode == 124
    assert run_cli("cancel", job_id, env=cli_env).returncode == 0
    assert store.status(job_id).state.value == "cancelled"
    assert run_cli("wait", job_id, env=cli_env).returncode == 1
    assert run_cli("status", "no-such-job", env=cli_env).returncode == 1
