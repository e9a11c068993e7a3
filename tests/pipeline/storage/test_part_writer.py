"""A part written piece by piece while the shard computes: whole and durable under its name
at close, nothing visible before, nothing left behind if it is abandoned or fenced off."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.jobs.resume import read_shard_file, shard_footer
from pipeline.storage.part_writer import PENDING_PIECES, PartWriter

SCHEMA = pa.schema([("id", pa.string()), ("n", pa.int32())], metadata={b"m3pipe": b"{}"})


def piece(start: int, rows: int) -> pa.Table:
    ids = [f"d{i}" for i in range(start, start + rows)]
    return pa.table({"id": ids, "n": list(range(start, start + rows))}, schema=SCHEMA)


def hidden_files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_pieces_become_one_part_in_order_with_its_footer(tmp_path):
    target = tmp_path / "part-00003.parquet"
    writer = PartWriter(target, SCHEMA)
    for start in range(0, 50, 10):
        writer.write(piece(start, 10).replace_schema_metadata({b"other": b"x"}))
    assert not target.exists()  # nothing under the name before close
    writer.close(shard_footer({"shard": 3, "rows": 50}))
    table = pq.read_table(target)
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(50)]
    assert table.schema.metadata[b"m3pipe"] == b"{}"  # the part's schema, not the pieces'
    assert read_shard_file(target).facts == {"shard": 3, "rows": 50}
    assert hidden_files(tmp_path) == []


def test_an_abandoned_part_leaves_nothing(tmp_path):
    target = tmp_path / "part-00000.parquet"
    writer = PartWriter(target, SCHEMA)
    writer.write(piece(0, 5))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_fence_that_refuses_keeps_the_part_invisible(tmp_path):
    def refuse() -> None:
        raise RuntimeError("another delivery owns this shard")

    writer = PartWriter(tmp_path / "part-00000.parquet", SCHEMA, refuse)
    writer.write(piece(0, 5))
    with pytest.raises(RuntimeError, match="another delivery"):
        writer.close({})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_is_raised_to_the_caller_and_never_blocks_it(tmp_path):
    writer = PartWriter(tmp_path / "part-00000.parquet", SCHEMA)
    wrong = pa.table({"other": [1]})
    writer.write(wrong)  # queued: the writer fails on it
    with pytest.raises(Exception, match=r"(?i)schema|field"):
        for start in range(PENDING_PIECES + 5):  # more than the queue holds: must not hang
            writer.write(piece(start, 1))
        writer.close({})
    assert hidden_files(tmp_path) == []


def test_an_object_store_part_is_put_whole_at_close(s3):
    writer = PartWriter(s3.url("out/part-00001.parquet"), SCHEMA)
    writer.write(piece(0, 7))
    assert s3.keys("out") == []
    writer.close(shard_footer({"rows": 7}))
    assert s3.keys("out") == ["part-00001.parquet"]
    assert read_shard_file(s3.url("out/part-00001.parquet")).facts == {"rows": 7}
    assert pq.read_table(pa.BufferReader(s3.get("out/part-00001.parquet"))).num_rows == 7


def test_a_shard_is_cut_into_pieces_of_bounded_documents_and_text():
    from pipeline.tasks import task_kind
    from pipeline.tasks.embed import PIECE_TEXT_BYTES
    from schemas.document import Document
    from schemas.job import Task

    embed = task_kind(Task.EMBED)
    short = [Document(id=f"s{i}", text="word " * 20) for i in range(1000)]
    # The first and last pieces a quarter of the others: tokenized, and written, alone.
    assert [len(p) for p in embed.pieces(short, 256)] == [64, 256, 256, 256, 104, 64]
    assert [len(p) for p in embed.pieces(short[:10], 4)] == [1, 4, 4, 1]
    assert [len(p) for p in embed.pieces(short[:60], 256)] == [60]
    assert [len(p) for p in embed.pieces(short[:1], 256)] == [1]
    long = [Document(id=f"l{i}", text="x" * (PIECE_TEXT_BYTES // 3)) for i in range(7)]
    pieces = embed.pieces(long, 256)
    assert [len(p) for p in pieces] == [1, 3, 2, 1]  # a quarter of the text at the edges
    assert [d.id for p in pieces for d in p] == [d.id for d in long]  # input order, each once
    assert embed.pieces([], 4) == []
