"""`m3pipe encode --resume` (issue 28, item 10): an interrupted local run is finished, its
good parts kept, the rest computed, every record exactly once."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli.main import main
from pipeline.engine.embedder import EmbedEngine
from pipeline.exit_codes import EXIT_INTERRUPTED, EXIT_OK
from pipeline.local.process import process_file
from pipeline.storage.output_dir import MANIFEST, read_shard_log
from pipeline.tasks import task_kind
from schemas.job import Task
from schemas.options import EncodeOptions, StorageDtype
from tests.pipeline.cli.test_cli_encode import _args, _write_jsonl

EMBED = task_kind(Task.EMBED)
OPTIONS = EncodeOptions(max_length=64, dtype=StorageDtype.FLOAT32)


def records(count: int, edited: dict[int, str] | None = None) -> list[dict[str, str]]:
    edited = edited or {}
    return [{"id": f"d{i:03d}", "text": edited.get(i, f"document {i} of the corpus")}
            for i in range(count)]  # fmt: skip


def interrupted_after(shards: int):
    done = []

    def progress(documents: int, tokens: int) -> None:
        done.append(documents)
        if len(done) == shards:
            raise KeyboardInterrupt

    return progress


def dense(table) -> np.ndarray:
    return np.asarray(table.column("dense").to_pylist())


def encode(tiny, source, out, **flags):
    return process_file(EMBED, source, out, EmbedEngine(tiny, OPTIONS), shard_items=10, **flags)


def test_an_interrupted_encode_is_finished_by_resume(tmp_path, tiny):
    source = _write_jsonl(tmp_path / "in.jsonl", records(60))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        encode(tiny, source, out, progress=interrupted_after(3))
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 1 <= len(written) < 6 and not (out / MANIFEST).exists()
    summary = encode(tiny, source, out, resume=True)
    assert summary.resumed == 10 * len(written) and summary.rows == 60
    for name, mtime in written.items():  # kept, not rewritten
        assert (out / name).stat().st_mtime_ns == mtime
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert table.column("id").to_pylist() == [f"d{i:03d}" for i in range(60)]
    fresh = encode(tiny, source, tmp_path / "fresh")
    want = pq.read_table(sorted((tmp_path / "fresh").glob("part-*.parquet")))
    assert table.column("dense").to_pylist() == want.column("dense").to_pylist()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["counts"]["resumed"] == summary.resumed
    assert manifest["counts"]["tokens"] == fresh.stats.tokens  # kept parts' tokens counted
    assert [entry["shard"] for entry in read_shard_log(out)] == list(range(6))


def test_resume_redoes_parts_whose_records_changed_and_drops_extra_ones(tmp_path, tiny):
    out = tmp_path / "out"
    encode(tiny, _write_jsonl(tmp_path / "in.jsonl", records(50)), out)
    (out / MANIFEST).unlink()  # as if interrupted at the end
    changed = _write_jsonl(tmp_path / "in.jsonl", records(30, edited={15: "another text"}))
    summary = encode(tiny, changed, out, resume=True)
    assert summary.resumed == 20  # parts 0 and 2 kept, part 1 redone, parts 3 and 4 gone
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [
        f"part-{i:05d}.parquet" for i in range(3)
    ]
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert table.column("id").to_pylist() == [f"d{i:03d}" for i in range(30)]


def test_the_interrupt_message_names_the_command_that_resumes(tmp_path, capsys, monkeypatch):
    inp = _write_jsonl(tmp_path / "in.jsonl", records(5))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.local.process.process_file", interrupted)
    argv = _args(inp, tmp_path / "out", "--overwrite")
    assert main(argv) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted; finish it with: m3pipe encode" in err and err.rstrip().endswith("--resume")
    assert "--overwrite" not in err
    monkeypatch.undo()
    again = err.rstrip().split("finish it with: m3pipe ", 1)[1].split()
    assert main(again) == EXIT_OK  # the printed command works as printed
    assert "0 kept from the interrupted run" in capsys.readouterr().err


def test_resume_is_not_combined_with_overwrite_or_reuse(tmp_path, capsys):
    inp = _write_jsonl(tmp_path / "in.jsonl", records(2))
    assert main(_args(inp, tmp_path / "out", "--resume", "--overwrite")) == 2
    assert "not with --overwrite or --reuse" in capsys.readouterr().err


def test_encode_writes_a_part_piece_by_piece_and_an_interrupted_one_never_appears(tmp_path, tiny):
    source = _write_jsonl(tmp_path / "in.jsonl", records(60))
    pieces, whole = tmp_path / "pieces", tmp_path / "whole"
    process_file(
        EMBED, source, pieces, EmbedEngine(tiny, OPTIONS), shard_items=30, piece_documents=4
    )
    process_file(
        EMBED, source, whole, EmbedEngine(tiny, OPTIONS), shard_items=30, piece_documents=30
    )
    names = sorted(p.name for p in pieces.glob("part-*.parquet"))
    assert names == sorted(p.name for p in whole.glob("part-*.parquet")) and len(names) == 2
    for name in names:
        streamed, at_once = pq.read_table(pieces / name), pq.read_table(whole / name)
        assert streamed.schema.metadata == at_once.schema.metadata  # digests, facts, model
        for column in ("id", "n_tokens", "sparse_indices"):
            assert streamed.column(column).equals(at_once.column(column))
        # Batched otherwise (a piece is batched on its own): equal up to float rounding.
        assert np.allclose(dense(streamed), dense(at_once), atol=1e-5)
        assert pq.ParquetFile(pieces / name).metadata.num_row_groups == 9  # 1 + 7 + 1 pieces
    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):  # in the first shard, after a few pieces
        process_file(EMBED, source, interrupted, EmbedEngine(tiny, OPTIONS), shard_items=30,
                     piece_documents=4, progress=interrupted_after(3))  # fmt: skip
    left = [p.name for p in interrupted.rglob("*")]
    assert not [name for name in left if "part-" in name], left  # no part, no temp file
