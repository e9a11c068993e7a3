"""`m3pipe run` with no broker configured: embedded Redis, workers, and nothing left behind."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow.dataset as ds

from pipeline.storage.output_dir import part_entries
from tests.integration.conftest import PRECISION_ENV, corpus_records, run_cli, write_jsonl


def processes_with_marker(marker: str) -> list[str]:
    """Command lines of live processes whose environment carries `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            if marker.encode() in environ:
                found.append(
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except OSError:
            continue
    return found


def test_run_without_broker_completes_and_leaves_no_process(
    tmp_path, tiny_model_built, model_cache
):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_records(60))
    marker = f"M3PIPE_TEST_MARKER=run-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3PIPE_") or k == PRECISION_ENV}
    env.update(
        M3PIPE_CACHE_DIR=str(model_cache),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        M3PIPE_TEST_MARKER=marker.split("=", 1)[1],
    )
    assert "M3PIPE_BROKER_URL" not in env
    out = tmp_path / "out"
    result = run_cli(
        "run", str(corpus), "--out", str(out), "--model", tiny_model_built,
        "--workers", "2", "--shard-docs", "15", "--device", "cpu", "--precision", "bf16",
        env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "embedded Redis" in result.stderr and "completed" in result.stderr
    ids = ds.dataset(out, format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == [f"doc-{i:05d}" for i in range(60)]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert len(part_entries(out)) == 4 and manifest["counts"]["rows"] == 60
    assert manifest["job"]["command"] == "run"  # not "submit": run made this job
    assert manifest["model"]["compute_dtype"] == "bfloat16"  # --precision reached the workers
    assert processes_with_marker(marker) == []


def test_run_fails_cleanly_when_workers_cannot_load_the_model(tmp_path, model_cache):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_records(5))
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3PIPE_") or k == PRECISION_ENV}
    env.update(M3PIPE_CACHE_DIR=str(model_cache), HF_HUB_OFFLINE="1", M3PIPE_HUB_TIMEOUT="2")
    result = run_cli(
        "run", str(corpus), "--out", str(tmp_path / "out"),
        "--model", str(tmp_path / "no-such-model"), "--device", "cpu",
        env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "every worker process exited" in result.stderr
    assert "no-such-model" in result.stderr  # the worker's own reason, from its log


def test_run_refuses_used_output_before_starting_anything(tmp_path, model_cache):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_records(3))
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000.parquet").write_bytes(b"earlier output")
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3PIPE_") or k == PRECISION_ENV}
    result = run_cli("run", str(corpus), "--out", str(out), "--model", "random:tiny", env=env)
    assert result.returncode == 1
    assert "already holds output" in result.stderr and "worker(s)" not in result.stderr
    assert (out / "part-00000.parquet").read_bytes() == b"earlier output"


def test_run_task_rerank_scores_every_pair_and_resumes_a_lost_part(tmp_path, model_cache):
    from tests.integration.test_rerank_queue import rerank_records

    records, good = rerank_records()
    pairs_file = write_jsonl(tmp_path / "pairs.jsonl", records)
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3PIPE_") or k == PRECISION_ENV}
    # M3PIPE_MODEL names a model that cannot load: a rerank run must not load the embedder.
    env.update(
        M3PIPE_CACHE_DIR=str(model_cache), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
        M3PIPE_MODEL=str(tmp_path / "no-such-embedder"),
    )  # fmt: skip
    out = tmp_path / "out"
    args = ("run", "--task", "rerank", str(pairs_file), "--out", str(out), "--model",
            "random:tiny", "--shard-docs", "25", "--device", "cpu", "-q")  # fmt: skip
    first = run_cli(*args, env=env, timeout=600)
    assert first.returncode == 3, first.stderr  # completed, 3 pairs rejected
    assert f"{good} pairs -> {good} rows" in first.stderr
    table = ds.dataset(out, format="parquet").to_table()
    assert table.num_rows == good and table.column_names[:3] == ["query_id", "doc_id", "score"]

    parts = sorted(out.glob("part-*.parquet"))
    lost = parts[1]
    lost_rows = ds.dataset(lost, format="parquet").to_table().sort_by("doc_id")
    lost.unlink()
    again = run_cli(*args, "--resume", env=env, timeout=600)
    assert again.returncode == 3, again.stderr
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [p.name for p in parts]
    redone = ds.dataset(lost, format="parquet").to_table().sort_by("doc_id")
    assert redone.column("doc_id").equals(lost_rows.column("doc_id"))
    assert redone.column("rank").equals(lost_rows.column("rank"))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["pairs"] == good and manifest["job"]["task"] == "rerank"
