"""Readers for every input format: records, rejects with line/row, kept fields."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.inputs.readers.formats import detect_format, read_records
from schemas.document import Document, Reject


def results(path, fmt="auto", **kwargs):
    return [item.result for item in read_records(path, fmt, **kwargs)]


def test_jsonl_zst_and_gz_read_like_plain(tmp_path):
    lines = b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n'
    with pa.output_stream(str(tmp_path / "d.jsonl.zst"), compression="zstd") as out:
        out.write(lines)
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(lines))
    for name in ("d.jsonl.zst", "d.jsonl.gz"):
        assert [d.id for d in results(tmp_path / name)] == ["a", "b"]


def test_truncated_stream_ends_in_one_reject_after_the_readable_records(tmp_path):
    path = tmp_path / "d.jsonl.zst"
    with pa.output_stream(str(path), compression="zstd") as out:
        out.write(b"".join(b'{"id": "%d", "text": "x"}\n' % i for i in range(5000)))
    path.write_bytes(path.read_bytes()[:-40])
    items = list(read_records(path))
    *docs, last = items
    assert [d.result.id for d in docs] == [str(i) for i in range(len(docs))]
    assert isinstance(last.result, Reject) and last.line == len(docs) + 1
    assert "the rest of the file is lost" in last.result.reason


def test_a_file_that_cannot_be_opened_is_one_reject(tmp_path):
    bad = tmp_path / "notgzip.csv.gz"
    bad.write_bytes(b"id,text\na,plain text, not gzip\n")
    [item] = list(read_records(bad))
    assert isinstance(item.result, Reject) and item.result.source == str(bad)
    assert "read failed at row 1" in item.result.reason


def test_csv_rows_rejects_and_kept_fields(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(
        b"doc,body,lang\n"
        b'a,"multi\nline text",en\n'
        b"b,,fr\n"  # empty text
        b"c,bad \xff bytes,de\n"
        b"d,too,many,fields\n"
        b"\n"
        b"e,fine,\n"
    )
    items = list(read_records(path, id_field="doc", text_field="body", keep_fields=("lang",)))
    assert [item.row for item in items] == [1, 2, 3, 4, 6]  # row 5 is blank: not a record
    kinds = [type(item.result) for item in items]
    assert kinds == [Document, Reject, Reject, Reject, Document]
    assert items[0].result.text == "multi\nline text"
    assert items[0].result.fields == {"lang": "en"}
    assert "invalid UTF-8" in items[2].result.reason
    assert "4 fields" in items[3].result.reason
    with pytest.raises(InputError, match="no column 'id'"):
        results(path)


def test_parquet_columns_int_ids_and_kept_fields(tmp_path):
    path = tmp_path / "d.parquet"
    table = pa.table(
        {
            "key": pa.array([1, 2, 3], pa.int64()),
            "content": ["one", None, "three"],
            "score": [0.5, 1.5, None],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    items = list(read_records(path, id_field="key", text_field="content", keep_fields=("score",)))
    assert [item.row for item in items] == [1, 2, 3]
    first, second, third = (item.result for item in items)
    assert (first.id, first.fields) == ("1", {"score": "0.5"})
    assert isinstance(second, Reject) and "must be a string, got null" in second.reason
    assert (third.id, third.fields) == ("3", {"score": None})
    with pytest.raises(InputError, match="no column 'nope'"):
        results(path, id_field="key", text_field="content", keep_fields=("nope",))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    [bad] = results(tmp_path / "bad.parquet")
    assert isinstance(bad, Reject) and "not a readable Parquet" in bad.reason


def test_text_directory_ids_are_relative_paths(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("bee")
    (root / "a.txt").write_text("\ufeffay")  # BOM dropped
    (root / "sub" / "c.txt").write_text("sea")
    (root / "empty.txt").write_text("  ")
    (root / "latin1.txt").write_bytes(b"caf\xe9")
    (root / "notes.md").write_text("ignored")
    out = results(root)
    assert [r.id for r in out] == ["a.txt", "b.txt", "empty.txt", "latin1.txt", "sub/c.txt"]
    assert out[0].text == "ay"
    assert isinstance(out[2], Reject) and isinstance(out[3], Reject)
    assert "invalid UTF-8" in out[3].reason


def test_format_detection(tmp_path):
    for name, fmt in [("a.jsonl", "jsonl"), ("a.ndjson.gz", "jsonl"), ("a.csv.zst", "csv"),
                      ("a.parquet", "parquet")]:  # fmt: skip
        (tmp_path / name).write_bytes(b"")
        assert detect_format(tmp_path / name) == fmt
    assert detect_format(tmp_path) == "txt"
    (tmp_path / "a.xml").write_bytes(b"")
    with pytest.raises(InputError, match="--format"):
        detect_format(tmp_path / "a.xml")
    assert detect_format(tmp_path / "a.xml", "jsonl") == "jsonl"


def test_non_string_kept_values_are_json(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "x", "meta": {"k": [1, "é"]}, "n": 3}) + "\n")
    [doc] = results(path, keep_fields=("meta", "n", "missing"))
    assert doc.fields == {"meta": '{"k": [1, "é"]}', "n": "3", "missing": None}
