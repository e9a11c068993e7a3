"""Property-based tests over every reader: for arbitrary byte soups and arbitrary mixes of
valid and invalid records, no exception escapes, input records = documents + rejects, and
every valid record's id comes out once, in order (issue 14)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.inputs.readers.formats import read_records
from schemas.document import Document, Reject

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMIT = 4096  # --max-record-bytes in these tests, so that some records are over it


def wrap(data: bytes, compression: str) -> bytes:
    if compression == "gz":
        return gzip.compress(data)
    if compression == "zst":
        sink = pa.BufferOutputStream()
        with pa.CompressedOutputStream(sink, "zstd") as out:
            out.write(data)
        return sink.getvalue().to_pybytes()
    return data


def read_all(name: str, data: bytes, fmt: str = "auto") -> list[object]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        return [item.result for item in read_records(path, fmt, max_record_bytes=LIMIT)]


def storable(value: object) -> bool:
    """Text m3pipe keeps: a string with no NUL and no lone surrogate (the test's own rule)."""
    return (
        isinstance(value, str)
        and "\x00" not in value
        and not any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)
    )


def expected_valid(record: dict[str, object]) -> bool:
    doc_id, text = record.get("id"), record.get("text")
    return (
        storable(doc_id)
        and 0 < len(doc_id) <= 1024  # type: ignore[arg-type]
        and storable(text)
        and bool(text.strip())  # type: ignore[union-attr]
    )


def check_accounting(results: list[object], records: list[dict[str, object]]) -> None:
    assert len(results) == len(records)  # one item per input record
    assert all(isinstance(r, Document | Reject) for r in results)
    valid_ids = [r["id"] for r in records if expected_valid(r) and _fits(r)]
    assert [r.id for r in results if isinstance(r, Document)] == valid_ids


def _fits(record: dict[str, object]) -> bool:
    return len(json.dumps(record).encode()) <= LIMIT  # JSONL: the line; other forms smaller


# Texts with what breaks parsers: quotes, commas, newlines, CR, BOMs, NUL, lone surrogates.
nasty_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(['"', ",", "\n", "\r", " ", "\ufeff", "\x00", "\\", "é", "東"]),
        st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
        st.characters(),
    ),
    max_size=40,
)
big_text = st.integers(min_value=LIMIT, max_value=3 * LIMIT).map(lambda n: "word " * (n // 5))
any_value = st.one_of(st.none(), st.integers(), st.booleans(), nasty_text, big_text)


@st.composite
def record_lists(draw: st.DrawFn) -> list[dict[str, object]]:
    count = draw(st.integers(min_value=0, max_value=12))
    records = []
    for index in range(count):
        doc_id = draw(st.one_of(st.just(f"id-{index}"), any_value.map(lambda v: v)))
        if isinstance(doc_id, str) and doc_id in {r.get("id") for r in records}:
            doc_id = f"id-{index}"
        records.append({"id": doc_id, "text": draw(any_value)})
    return records


@SETTINGS
@given(records=record_lists(), compression=st.sampled_from(["", "gz", "zst"]))
def test_jsonl_records_each_end_once(records, compression):
    lines = [json.dumps(r) for r in records]  # ensure_ascii: surrogates travel as \udXXX
    data = ("\n".join(lines) + "\n").encode() if lines else b""
    suffix = f".{compression}" if compression else ""
    check_accounting(read_all(f"d.jsonl{suffix}", wrap(data, compression)), records)


@SETTINGS
@given(records=record_lists(), compression=st.sampled_from(["", "gz", "zst"]))
def test_csv_records_each_end_once(records, compression):
    # CSV holds strings only, each as UTF-8: a lone surrogate becomes invalid UTF-8 bytes.
    rows = [{k: "" if v is None else str(v) for k, v in r.items()} for r in records]
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["id", "text"])
    for row in rows:
        writer.writerow([row["id"], row["text"]])
    data = out.getvalue().encode("utf-8", "surrogatepass")  # a lone surrogate: bad UTF-8
    suffix = f".{compression}" if compression else ""
    results = read_all(f"d.csv{suffix}", wrap(data, compression))
    assert len(results) == len(rows)
    expected = [(r["id"], r["text"]) for r in rows if expected_valid(r) and _csv_size(r) <= LIMIT]
    assert [(r.id, r.text) for r in results if isinstance(r, Document)] == expected


def _csv_size(row: dict[str, str]) -> int:
    """Bytes of the row as written, without its final newline (what the limit counts)."""
    out = io.StringIO(newline="")
    csv.writer(out).writerow([row["id"], row["text"]])
    return len(out.getvalue().encode("utf-8", "surrogatepass")) - 1


@SETTINGS
@given(records=record_lists())
def test_parquet_records_each_end_once(records):
    rows = [{k: None if v is None else str(v) for k, v in r.items()} for r in records]
    encoded = {
        name: pa.array(
            [None if r[name] is None else r[name].encode("utf-8", "surrogatepass") for r in rows],
            pa.binary(),
        )
        for name in ("id", "text")
    }
    sink = io.BytesIO()
    pq.write_table(pa.table(encoded), sink)
    results = read_all("d.parquet", sink.getvalue())
    assert len(results) == len(rows)
    expected = [
        r["id"]
        for r in rows
        if expected_valid(r)
        and sum(len(v.encode("utf-8", "surrogatepass")) for v in r.values() if v) <= LIMIT
    ]
    assert [r.id for r in results if isinstance(r, Document)] == expected


@SETTINGS
@given(soup=st.binary(max_size=3 * LIMIT), fmt=st.sampled_from(["jsonl", "csv", "parquet"]))
def test_byte_soup_never_escapes(soup, fmt):
    if fmt == "csv":
        soup = b"id,text\n" + soup
    names = {"jsonl": "d.jsonl", "csv": "d.csv", "parquet": "d.parquet"}
    results = read_all(names[fmt], soup)
    assert all(isinstance(r, Document | Reject) for r in results)
    if fmt == "jsonl":
        lines = soup.removeprefix(b"\xef\xbb\xbf").split(b"\n")
        assert len(results) == sum(1 for line in lines if line.strip())


@SETTINGS
@given(soup=st.binary(max_size=2 * LIMIT), compression=st.sampled_from(["gz", "zst"]))
def test_damaged_compressed_streams_end_in_rejects(soup, compression):
    """A valid stream cut or corrupted anywhere: records before the damage, then a reject."""
    data = b"".join(b'{"id": "%d", "text": "t"}\n' % i for i in range(200))
    packed = wrap(data, compression)
    cut = len(soup) % max(len(packed), 1)
    damaged = packed[:cut] + soup[:16]
    results = read_all(f"d.jsonl.{compression}", damaged)
    documents = [r.id for r in results if isinstance(r, Document)]
    assert documents == [str(i) for i in range(len(documents))]
    assert all(isinstance(r, Document | Reject) for r in results)


@SETTINGS
@given(
    files=st.dictionaries(
        st.text(alphabet="abcxyz_", min_size=1, max_size=6),
        st.binary(max_size=2 * LIMIT),
        max_size=6,
    )
)
def test_txt_dir_every_file_is_one_item(files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "docs"
        (root / "sub").mkdir(parents=True)
        for index, (name, data) in enumerate(files.items()):
            folder = root / "sub" if index % 2 else root
            (folder / f"{name}.txt").write_bytes(data)
        results = [item.result for item in read_records(root, max_record_bytes=LIMIT)]
    assert len(results) == len(files)
    for result in results:
        assert isinstance(result, Document | Reject)
