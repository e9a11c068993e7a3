"""The output reads as README.md says, with the readers users have: its pyarrow, DuckDB and
polars blocks run here as written, on a real output (issue 33, item 6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.engine.embedder import EmbedEngine
from pipeline.local.process import process_file
from pipeline.tasks import task_kind
from schemas.job import Task
from schemas.options import EncodeOptions

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def example(tmp_path_factory, tiny) -> Path:
    """An output where the README's examples read it: out/example under a fresh directory,
    with every sidecar file a finished job has (_manifest.json, _rejects.jsonl, ...)."""
    root = tmp_path_factory.mktemp("readers")
    source = root / "in.jsonl"
    lines = [json.dumps({"id": f"d{i}", "text": f"text number {i} " * (i + 1)}) for i in range(9)]
    source.write_text("\n".join([*lines, "not json"]) + "\n")
    out = root / "out" / "example"
    engine = EmbedEngine(tiny, EncodeOptions(max_length=64))
    process_file(task_kind(Task.EMBED), source, out, engine, shard_items=4)
    assert (out / "_rejects.jsonl").exists() and (out / "_manifest.json").exists()
    return root


def test_the_readme_pyarrow_block(example, monkeypatch):
    monkeypatch.chdir(example)
    [block] = [b for b in readme_blocks("python") if "pyarrow.dataset" in b]
    scope: dict = {}
    exec(block, scope)
    assert scope["table"].num_rows == 9
    row, colbert = scope["row"], scope["colbert"]
    assert colbert.dtype == np.float16 and colbert.shape == (row["n_tokens"] - 1, 64)
    np.testing.assert_allclose(np.linalg.norm(colbert.astype(np.float32), axis=1), 1, atol=1e-3)


def test_the_readme_duckdb_block(example, monkeypatch):
    import duckdb

    monkeypatch.chdir(example)
    [block] = [b for b in readme_blocks("sql") if "read_parquet" in b]
    statements = [s.strip() for s in block.split(";") if s.strip()]
    by_tokens = duckdb.sql(statements[0]).fetchall()
    assert len(by_tokens) == 5 and by_tokens[0][1] >= by_tokens[-1][1]
    dense = duckdb.sql(statements[1]).fetchall()
    assert len(dense) == 2 and len(dense[0][1]) == 3
    vectors = duckdb.sql(statements[2]).fetchall()
    [(first,)] = duckdb.sql(
        "SELECT colbert FROM read_parquet('out/example/part-*.parquet') WHERE id = 'd0'"
    ).fetchall()
    decoded = np.frombuffer(b"".join(first), "<f2").reshape(len(first), -1)  # as README.md
    assert decoded.shape == (dict(vectors).get("d0", len(first)), 64)


def test_the_readme_polars_block_and_why_the_directory_form_fails(example, monkeypatch):
    import polars as pl

    monkeypatch.chdir(example)
    [block] = [b for b in readme_blocks("python") if "polars" in b]
    scope: dict = {}
    exec(block, scope)
    assert scope["frame"].height == 9
    cell = pl.read_parquet("out/example/part-*.parquet")["colbert"][0]
    decoded = np.frombuffer(b"".join(cell.to_list()), "<f2").reshape(len(cell), -1)
    assert decoded.shape[1] == 64 and decoded.dtype == np.float16
    with pytest.raises(Exception, match="extension"):  # the sidecars: as README.md says
        pl.scan_parquet("out/example/").collect()


def test_the_readme_compact_block(tmp_path, tiny, monkeypatch):
    """README's decoding of --storage compact rows gives what the formulas say (random:tiny
    is 64-dim: the block's 1024 is bge-m3's, so it is read as 64 here)."""
    from schemas.vector_layout import colbert_floats, dense_floats

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"d{i}", "text": f"text {i} " * (i + 3)}) + "\n"
                              for i in range(4)))  # fmt: skip
    options = EncodeOptions(max_length=64, dense_storage="int8", colbert_storage="binary")
    out = tmp_path / "out" / "compact"
    process_file(task_kind(Task.EMBED), source, out, EmbedEngine(tiny, options), shard_items=4)
    monkeypatch.chdir(tmp_path)
    [block] = [b for b in readme_blocks("python") if "out/compact" in b]
    scope: dict = {}
    exec(block.replace("1024", "64"), scope)
    import pyarrow.parquet as pq

    table = pq.read_table(out / "part-00000.parquet").slice(0, 1)
    np.testing.assert_allclose(scope["dense"], dense_floats(table)[0], rtol=1e-6)
    _, colbert = colbert_floats(table)  # +-1 / sqrt(D) in m3pipe's readers
    np.testing.assert_array_equal(scope["signs"], np.sign(colbert))
    assert scope["signs"].shape == (scope["row"]["n_tokens"] - 1, 64)
