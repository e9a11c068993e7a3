"""A queue job whose inputs and output live in S3 (a local moto server): real producer,
real workers, the parts read back from the bucket; then a lost part redone by --resume."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.storage.output_dir import part_entries
from schemas.vector_layout import colbert_vectors
from tests.integration.conftest import corpus_records, run_cli

SHARD_DOCS = 5


def upload_inputs(s3) -> tuple[list[str], list[str]]:
    """A .jsonl.gz, a CSV, a Parquet file and a .txt directory; returns (urls, good ids)."""
    records = corpus_records(30)
    jsonl = "".join(json.dumps(r) + "\n" for r in records) + '{"id": "no-text"}\n'
    csv_rows = "".join(f"csv-{i},row {i} of the csv file\n" for i in range(6))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": ["pq-0", "pq-1"], "text": ["parquet one", "two"]}), buffer)
    urls = [
        s3.put("in/corpus.jsonl.gz", gzip.compress(jsonl.encode())),
        s3.put("in/table.csv", ("id,text\n" + csv_rows).encode()),
        s3.put("in/table.parquet", buffer.getvalue()),
    ]
    s3.put("in/docs/a.txt", b"a text file in the bucket")
    s3.put("in/docs/nested/b.txt", b"another one, one level down")
    s3.put("in/docs/latin1.txt", "caf\xe9".encode("latin-1"))
    urls.append(s3.url("in/docs"))
    ids = [r["id"] for r in records] + [f"csv-{i}" for i in range(6)]
    ids += ["pq-0", "pq-1", "a.txt", "nested/b.txt"]
    return urls, ids


def test_job_reads_and_writes_s3_and_resume_redoes_only_a_lost_part(s3, cli_env, workers, store):
    cli_env.update(s3.server.env())  # the workers and the CLI reach the bucket like this
    inputs, ids = upload_inputs(s3)
    out = s3.url("out")
    args = ("--out", out, "--shard-docs", str(SHARD_DOCS))
    submitted = run_cli("submit", *inputs, *args, env=cli_env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    workers.start(2)
    waited = run_cli("wait", job_id, "--timeout", "240", env=cli_env, timeout=260)
    assert waited.returncode == 3, waited.stderr  # completed, with two rejects

    keys = s3.keys("out")
    parts = [k for k in keys if k.startswith("part-")]
    assert keys == ["_job.json", "_manifest.json", "_rejects.jsonl", "_shards.jsonl", *parts]
    table = ds.dataset(f"{s3.name}/out", filesystem=s3.fs, format="parquet").to_table()
    assert sorted(table.column("id").to_pylist()) == sorted(ids)  # every document once
    manifest = json.loads(s3.get("out/_manifest.json"))
    assert manifest["job"]["out"] == out and manifest["job"]["inputs"] == inputs
    assert manifest["job"]["command"] == "submit"
    assert manifest["counts"]["rows"] == len(ids) and manifest["counts"]["rejected"] == 2
    assert [f["name"] for f in part_entries(out)] == parts
    for entry in part_entries(out):
        assert entry["bytes"] == s3.fs.get_file_info(f"{s3.name}/out/{entry['name']}").size
    rejects = [json.loads(line) for line in s3.get("out/_rejects.jsonl").decode().splitlines()]
    assert sorted(r["source"] for r in rejects) == [
        s3.url("in/corpus.jsonl.gz"),
        s3.url("in/docs/latin1.txt"),
    ]

    # One part is lost; a resumed submission re-encodes that shard alone.
    lost = parts[2]
    s3.fs.delete_file(f"{s3.name}/out/{lost}")
    resumed = run_cli("submit", *inputs, *args, "--resume", env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == job_id
    assert f"({len(parts) - 1} already done, kept)" in resumed.stderr
    waited = run_cli("wait", job_id, "--timeout", "240", env=cli_env, timeout=260)
    assert waited.returncode == 3, waited.stderr
    assert s3.keys("out") == keys
    # Only the lost shard was delivered again (--resume registers the job afresh).
    assert [shard for shard in range(len(parts)) if store.attempts(job_id, shard)] == [2]
    table = ds.dataset(f"{s3.name}/out", filesystem=s3.fs, format="parquet").to_table()
    assert sorted(table.column("id").to_pylist()) == sorted(ids)


def test_run_reuses_an_output_in_the_bucket(s3, cli_env, workers, tmp_path):
    """`m3pipe submit` writes a first output to S3; `m3pipe run --reuse` of an edited corpus
    copies the unchanged documents from it, and equals a full local encode row for row."""
    cli_env.update(s3.server.env())
    common = ("--shard-docs", "10", "--dtype", "float32", "--max-length", "128")
    records = corpus_records(40)
    first = s3.put("in/v1.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    submitted = run_cli("submit", first, "--out", s3.url("v1"), *common, env=cli_env)
    assert submitted.returncode == 0, submitted.stderr
    workers.start(1)
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert run_cli("wait", job_id, "--timeout", "240", env=cli_env, timeout=260).returncode == 0

    edited = [dict(r) for r in records if r["id"] not in ("doc-00007", "doc-00031")]
    for record in edited[12:15]:
        record["text"] += " (edited)"
    edited.insert(20, {"id": "new", "text": "a new document"})
    text = "".join(json.dumps(r) + "\n" for r in edited)
    second = s3.put("in/v2.jsonl", text.encode())
    ran = run_cli("run", second, "--out", s3.url("v2"), "--reuse", s3.url("v1"), *common,
                  "--workers", "1", "--device", "cpu", env=cli_env, timeout=600)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    manifest = json.loads(s3.get("v2/_manifest.json"))
    counts = manifest["counts"]
    assert (counts["reused"], counts["encoded"], counts["dropped"]) == (35, 4, 2)

    local = tmp_path / "v2.jsonl"
    local.write_text(text)
    full = run_cli("encode", str(local), "--out", str(tmp_path / "full"), *common, env=cli_env)
    assert full.returncode == 0, full.stderr
    got = ds.dataset(f"{s3.name}/v2", filesystem=s3.fs, format="parquet").to_table()
    want = ds.dataset(tmp_path / "full", format="parquet").to_table()
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.column("sparse_indices").equals(want.column("sparse_indices"))
    for name in ("dense", "colbert", "sparse_values"):
        np.testing.assert_allclose(values(got, name), values(want, name), atol=1e-5)


def values(table: pa.Table, name: str) -> np.ndarray:
    """Every float of a (nested) list column, flat."""
    if name == "colbert":
        return colbert_vectors(table.column(name), table.schema.field(name))[1].reshape(-1)
    array = table.column(name).combine_chunks()
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    return array.to_numpy()
