import gzip
import json

import pytest

from pipeline.errors import InputError
from producers.inputs.jsonl import count_lines, read_jsonl
from producers.inputs.sharding import cut_shards
from producers.inputs.validate import record_to_document
from schemas.document import Document, Reject


def _reasons(path, **kwargs):
    return [
        (item.line, item.result.reason if isinstance(item.result, Reject) else item.result.id)
        for item in read_jsonl(path, **kwargs)
    ]


def test_every_kind_of_bad_line_gets_its_own_reason(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [
        b'{"id": "ok", "text": "fine"}',
        b'{"id": "ok2", "text": "fine too"',
        b'["a", "list"]',
        b'{"text": "no id"}',
        b'{"id": 7, "text": "int id"}',
        b'{"id": "t1"}',
        b'{"id": "t2", "text": null}',
        b'{"id": "t3", "text": "   \\n\\t "}',
        b'{"id": "t4", "text": "caf\xe9"}',
        b"",
        b'{"id": "", "text": "empty id"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    got = dict(_reasons(path))
    assert got[1] == "ok"
    assert got[2].startswith("malformed JSON")
    assert got[3] == "record is a JSON list, expected an object"
    assert got[4] == "missing id field 'id'"
    assert got[5] == "id field 'id' must be a string, got int"
    assert got[6] == "missing text field 'text'"
    assert got[7] == "text field 'text' must be a string, got null"
    assert got[8] == "text is empty or whitespace only"
    assert got[9].startswith("invalid UTF-8 at byte")
    assert 10 not in got  # a blank line is not a record
    assert got[11] == "id field 'id' is empty"


def test_custom_fields_and_gzip(tmp_path):
    path = tmp_path / "in.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(json.dumps({"doc_id": "a", "body": "x y"}) + "\n")
        handle.write(json.dumps({"id": "b", "text": "z"}) + "\n")
    got = _reasons(path, id_field="doc_id", text_field="body")
    assert got == [(1, "a"), (2, "missing id field 'doc_id'")]
    assert count_lines(path) == 0  # unknown for compressed input


def test_missing_directory_and_truncated_gzip(tmp_path):
    with pytest.raises(InputError, match="not found"):
        list(read_jsonl(tmp_path / "nope.jsonl"))
    with pytest.raises(InputError, match="directory"):
        list(read_jsonl(tmp_path))
    full = gzip.compress(b"".join(b'{"id": "%d", "text": "t"}\n' % i for i in range(5000)))
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(InputError, match=r"read failed at line [0-9]+, the rest") as info:
        list(read_jsonl(cut))
    lost_from = int(info.value.line)
    assert 1000 < lost_from < 5000  # the readable half came through first


def test_long_ids_are_rejected_not_truncated():
    result = record_to_document({"id": "x" * 2000, "text": "t"}, source="s", line=1)
    assert isinstance(result, Reject) and "longer than 1024" in result.reason


def test_cut_shards_by_count_and_size():
    docs = [Document(id=str(i), text="x" * (100 if i == 3 else 10)) for i in range(7)]
    shards = list(cut_shards(docs, max_docs=3, max_size=50))
    assert [[d.id for d in s] for s in shards] == [["0", "1", "2"], ["3"], ["4", "5", "6"]]
    assert sum(len(s) for s in shards) == 7
    with pytest.raises(ValueError):
        list(cut_shards(docs, max_docs=0))
