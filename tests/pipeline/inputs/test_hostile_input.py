"""Damaged and hostile input: every record ends as a document or one reject with its reason,
memory stays within the record limit, and nothing escapes as an exception (issue 14)."""

from __future__ import annotations

import gzip
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.inputs.readers.formats import read_records
from schemas.document import Document, Reject


def results(path, fmt="auto", **kwargs):
    return [item.result for item in read_records(path, fmt, **kwargs)]


def ids(items):
    return [r.id for r in items if isinstance(r, Document)]


def reasons(items):
    return [r.reason for r in items if isinstance(r, Reject)]


def test_csv_unterminated_quote_is_one_reject_with_its_position(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'id,text\nq1,a\nq2,"oops\nq3,b\nq4,c\n')
    items = results(path)
    assert ids(items) == ["q1"]
    [reject] = [r for r in items if isinstance(r, Reject)]
    assert reject.row == 2
    assert reject.reason == ("unterminated quoted field from row 2 (line 3) to the end of the file")


def test_csv_quotes_that_close_keep_every_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(
        b'id,text\na,"two\r\nlines, one ""quoted"""\r\nb,plain "inner" quote\r\nc,"x"y\r\n'
    )
    items = results(path)
    assert [(r.id, r.text) for r in items] == [
        ("a", 'two\r\nlines, one "quoted"'),
        ("b", 'plain "inner" quote'),
        ("c", "xy"),
    ]


def test_lone_surrogates_in_text_id_or_field_are_rejects_that_can_be_written(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"id": "a", "text": "x \\ud800"}\n'
        '{"id": "b\\udfff", "text": "fine"}\n'
        '{"id": "c", "text": "fine", "lang": "\\ud834"}\n'
        '{"id": "d", "text": "pair \\ud83d\\ude00 is one character"}\n'
    )
    items = results(path, keep_fields=("lang",))
    assert ids(items) == ["d"]
    assert reasons(items) == [
        "text contains a lone surrogate (invalid Unicode)",
        "id contains a lone surrogate (invalid Unicode)",
        "kept field 'lang' contains a lone surrogate (invalid Unicode)",
    ]
    written = [json.loads(r.model_dump_json()) for r in items if isinstance(r, Reject)]
    assert written[1]["id"] == "b\\udfff"  # escaped, so the rejects file stays UTF-8


def test_deeply_nested_json_is_one_reject_and_the_file_goes_on(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + '\n{"id": "ok", "text": "after"}\n')
    items = results(path)
    assert ids(items) == ["ok"]
    assert reasons(items) == ["malformed JSON: nested too deeply"]


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "d.jsonl.gz"])
def test_a_leading_bom_is_skipped(tmp_path, name):
    body = b'{"id": "a", "text": "x"}\n' if ".jsonl" in name else b"id,text\na,x\n"
    data = b"\xef\xbb\xbf" + body
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert [(r.id, r.text) for r in results(tmp_path / name)] == [("a", "x")]


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.csv", "d.csv.zst"])
def test_an_oversized_record_is_rejected_while_read_and_the_next_ones_kept(tmp_path, name):
    big = "w " * 5000
    if ".jsonl" in name:
        lines = [json.dumps({"id": i, "text": t}) for i, t in [("a", "x"), ("b", big), ("c", "y")]]
        data = ("\n".join(lines) + "\n").encode()
    else:
        data = f'id,text\na,x\nb,"{big}\n{big}"\nc,y\n'.encode()
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif name.endswith(".zst"):
        with pa.output_stream(str(path), compression="zstd") as out:
            out.write(data)
    else:
        path.write_bytes(data)
    items = results(path, max_record_bytes=4096)
    assert ids(items) == ["a", "c"]
    [reason] = reasons(items)
    assert reason.startswith("record is larger than --max-record-bytes (")
    assert "> 4,096 bytes" in reason


def test_a_no_newline_gzip_is_read_in_bounded_memory(tmp_path):
    """64 MB of decompressed bytes without a newline, with a 1 MiB record limit."""
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(b'{"id": "a", "text": "x"}\n')
        block = b"a" * (1 << 20)
        for _ in range(64):
            out.write(block)
    items = results(path, max_record_bytes=1 << 20)
    assert ids(items) == ["a"]
    assert reasons(items) == [
        "record is larger than --max-record-bytes (67,108,864 > 1,048,576 bytes)"
    ]


def test_a_truncated_zst_keeps_the_records_before_the_damage(tmp_path):
    """Lost: at most one zstd block (128 KiB decompressed) and the 16 KiB read-ahead."""
    path = tmp_path / "d.jsonl.zst"
    lines = [b'{"id": "%d", "text": "hello %d"}\n' % (i, i) for i in range(10_000)]
    with pa.output_stream(str(path), compression="zstd") as out:
        out.write(b"".join(lines))
    path.write_bytes(path.read_bytes()[:-50])
    items = results(path)
    kept = ids(items)
    assert kept == [str(i) for i in range(len(kept))]
    assert sum(len(line) for line in lines[len(kept) :]) <= (128 + 16) * 1024
    assert "the rest of the file is lost" in reasons(items)[-1]


def test_parquet_binary_text_is_decoded_and_bad_utf8_rows_rejected(tmp_path):
    path = tmp_path / "d.parquet"
    table = pa.table(
        {
            "id": pa.array([b"a", b"b", b"c"], pa.binary()),
            "text": pa.array([b"caf\xc3\xa9", b"bad \xff", b"x" * 5000], pa.large_binary()),
        }
    )
    pq.write_table(table, path)
    items = results(path, max_record_bytes=4096)
    assert [(r.id, r.text) for r in items if isinstance(r, Document)] == [("a", "café")]
    assert reasons(items) == [
        "column 'text' is not valid UTF-8 (at byte 4)",
        "record is larger than --max-record-bytes (5,001 > 4,096 bytes)",
    ]


def test_txt_dir_never_follows_links_and_reads_each_file_once(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the root")
    (root / "a.txt").write_text("alpha")
    (root / "sub" / "b.txt").write_text("beta")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "leak.txt").symlink_to(outside)
    os.mkfifo(root / "pipe.txt")  # reading it would block forever
    items = list(read_records(root))
    assert sorted(ids([i.result for i in items])) == ["a.txt", "sub/b.txt"]
    rejects = {r.id: r.reason for r in (i.result for i in items) if isinstance(r, Reject)}
    assert rejects == {
        "leak.txt": "symbolic link, not followed (inputs never leave their root)",
        "sub/loop": "symbolic link, not followed (inputs never leave their root)",
        "pipe.txt": "not a regular file",
    }


def test_txt_file_over_the_limit_is_rejected_unread(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "big.txt").write_bytes(b"x" * 5000)
    (root / "small.txt").write_bytes(b"\xef\xbb\xbfsmall")
    items = results(root, max_record_bytes=4096)
    assert [(r.id, r.text) for r in items if isinstance(r, Document)] == [("small.txt", "small")]
    assert reasons(items) == ["record is larger than --max-record-bytes (5,000 > 4,096 bytes)"]


def test_a_directory_named_like_a_file_format_is_refused(tmp_path):
    (tmp_path / "x.jsonl").mkdir()
    with pytest.raises(InputError, match="is a directory, but its name says jsonl"):
        results(tmp_path / "x.jsonl")
    assert results(tmp_path / "x.jsonl", "txt") == []
