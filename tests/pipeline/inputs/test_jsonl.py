import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import InputError
from pipeline.inputs.readers.jsonl import count_lines, jsonl_record, read_jsonl
from pipeline.inputs.readers.lines import oversize_reason, read_lines
from pipeline.inputs.sharding import cut_shards
from pipeline.inputs.validate import DocumentShape, InputItem, record_to_document
from schemas.document import Document, Origin, Reject


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


# -- the fast path against the exact one -------------------------------------------------

nasty = st.text(
    alphabet=st.one_of(
        st.sampled_from(['"', "\\", "\n", "\r", " ", "\t", "\ufeff", "\x00", "\x0b", "é", "東"]),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
        st.characters(),
    ),
    max_size=30,
)
values = st.one_of(st.none(), st.integers(), st.booleans(), nasty, st.just(""), st.just("x" * 1100))
fine = st.text(alphabet="abcé東 ", min_size=1, max_size=8).filter(str.strip)
poisoned = st.builds(  # storable but for one NUL or lone surrogate
    lambda a, poison, b: a + poison + b, fine, st.sampled_from(["\x00", "\ud800", "\udfff"]), fine
)
records = st.fixed_dictionaries(
    {"id": st.one_of(fine, poisoned, values), "text": st.one_of(fine, poisoned, nasty, values)},
    optional={"other": values},
).map(lambda r: {k: v for k, v in r.items() if v is not None or k == "other"})
json_lines = st.builds(
    lambda r, ascii_only: json.dumps(r, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"),
    records,
    st.booleans(),  # escaped (\ud800, \u0000) or raw (invalid UTF-8 for a surrogate)
)
lines = st.one_of(
    json_lines,
    json_lines.map(lambda line: b"  " + line + b" \r"),
    st.binary(max_size=30),
    st.sampled_from([b"", b"   ", b"\x0b", b"[1, 2]", b'"text"', b"\xef\xbb\xbf{}", b"{} {}"]),
    st.just(b"[" * 5000 + b"]" * 5000),  # deeper than the parser's recursion limit
)


def exact_items(path, shape, limit):
    """What read_jsonl gave before its fast path: every line through jsonl_record."""
    items = []
    with open(path, "rb") as handle:
        for line in read_lines(handle, limit):
            if line.data is None:
                reason = oversize_reason(line.size, limit)
                items.append(
                    InputItem(
                        Reject(source=str(path), line=line.number, reason=reason), line.number
                    )
                )
            elif line.data.strip():
                origin = Origin(str(path), line.number, line.start, line.end)
                record = jsonl_record(line.data, str(path), line.number, shape, origin)
                items.append(InputItem(record, line=line.number))
    return items


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=st.lists(lines, max_size=15),
    end=st.sampled_from([b"\n", b""]),
    keep=st.booleans(),
)
def test_fast_path_gives_what_the_exact_path_gives(tmp_path_factory, body, end, keep):
    """Same documents (ids, texts, origins), same rejects with the same reasons, for any
    line: valid, invalid UTF-8, bad JSON, wrong types, NUL, surrogates, too long, nested."""
    path = tmp_path_factory.mktemp("fast") / "d.jsonl"
    path.write_bytes(b"\n".join(body) + end)
    shape = DocumentShape(keep_fields=("other",) if keep else ())
    limit = 2048
    got = list(read_jsonl(path, shape=shape, max_record_bytes=limit))
    expected = exact_items(path, shape, limit)
    assert [(i.line, type(i.result)) for i in got] == [(i.line, type(i.result)) for i in expected]
    for fast, exact in zip(got, expected, strict=True):
        assert fast.result == exact.result
        if isinstance(fast.result, Document):
            assert fast.result.model_dump_json() == exact.result.model_dump_json()
            assert fast.result.origin == exact.result.origin
