"""Bad input across every reader, in one job: it completes and every record is accounted for.

Each input file mixes good records with one of each kind of bad record its format can hold.
The test knows what should become of every record (a row, or a reject with a reason) and
checks the output by id and the rejects by position, then input records = rows + rejects.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.exit_codes import EXIT_REJECTS
from tests.integration.conftest import run_cli

BIG_TEXT = "fifty megabytes of text " * (50 * 1024 * 1024 // 24 + 1)  # just over 50 MiB
TOO_BIG = "record is larger than --max-record-bytes ("  # rejected while read
DUPLICATE = "duplicate id (first seen at"


class Expected:
    """What each input record should become: rows by id, rejects by (file, position)."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.rejects: dict[tuple[str, int | None], str] = {}

    def row(self, doc_id: str) -> None:
        self.rows.append(doc_id)

    def reject(self, name: str, where: int | None, reason: str) -> None:
        self.rejects[(name, where)] = reason

    @property
    def records(self) -> int:
        return len(self.rows) + len(self.rejects)


def good(prefix: str, count: int, expected: Expected) -> list[tuple[str, str]]:
    pairs = [(f"{prefix}-{i:02d}", f"{prefix} document number {i}") for i in range(count)]
    for doc_id, _ in pairs:
        expected.row(doc_id)
    return pairs


def write_jsonl(root: Path, expected: Expected) -> Path:
    lines = [json.dumps({"id": i, "text": t}).encode() for i, t in good("jsonl", 5, expected)]
    bad: list[tuple[bytes, str]] = [
        (b'{"id": "broken", "text": ', "malformed JSON"),
        (b'{"id": 7, "text": "int id"}', "id field 'id' must be a string, got int"),
        (b'{"id": "list-text", "text": ["a"]}', "text field 'text' must be a string, got list"),
        (b'{"text": "no id"}', "missing id field 'id'"),
        (b'{"id": "no-text"}', "missing text field 'text'"),
        (b'{"id": "empty", "text": ""}', "text is empty or whitespace only"),
        (b'{"id": "blank", "text": " \\n\\t "}', "text is empty or whitespace only"),
        (b'{"id": "latin1", "text": "caf\xe9"}', "invalid UTF-8"),
        (b'{"id": "nul", "text": "a\\u0000b"}', "text contains NUL characters"),
        (b'{"id": "raw-nul", "text": "a\x00b"}', "malformed JSON: Invalid control character"),
        (b'["an", "array"]', "record is a JSON list, expected an object"),
        (json.dumps({"id": "big", "text": BIG_TEXT}).encode(), TOO_BIG),
        (b'{"id": "jsonl-00", "text": "again"}', DUPLICATE),
        (b'{"id": "surrogate", "text": "x \\ud800"}', "text contains a lone surrogate"),
        (b'{"id": "\\udfff", "text": "bad id"}', "id contains a lone surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ]
    for raw, reason in bad:
        lines.append(raw)
        expected.reject("in.jsonl", len(lines), reason)
    lines.append(json.dumps({"id": "jsonl-last", "text": "after the bad ones"}).encode())
    expected.row("jsonl-last")
    path = root / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # a BOM first: skipped
    return path


def write_truncated_gzip(root: Path, expected: Expected) -> Path:
    """A .jsonl.gz cut in the middle: the readable lines go through, the rest is one reject."""
    records = [{"id": f"gz-{i:04d}", "text": f"compressed document {i}"} for i in range(3000)]
    full = gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode())
    path = root / "cut.jsonl.gz"
    path.write_bytes(full[: len(full) // 2])
    readable = 0
    try:
        with gzip.open(path, "rb") as handle:
            for _ in handle:
                readable += 1
    except EOFError:
        pass
    assert 100 < readable < 3000
    for record in records[:readable]:
        expected.row(record["id"])
    expected.reject("cut.jsonl.gz", readable + 1, "the rest of the file is lost")
    return path


def write_csv(root: Path, expected: Expected) -> Path:
    path = root / "in.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        rows = [list(pair) for pair in good("csv", 5, expected)]
        writer.writerows(rows)
        bad = [
            (["csv-empty", ""], "text is empty or whitespace only"),
            (["", "no id"], "id field 'id' is empty"),
            (["csv-nul", "a\x00b"], "text contains NUL characters"),
            (["csv-three", "fields", "here"], "row has 3 fields, header has 2"),
            (["csv-big", BIG_TEXT], TOO_BIG),
            (["jsonl-01", "same id as a JSONL record"], DUPLICATE),
        ]
        for values, reason in bad:
            writer.writerow(values)
            expected.reject("in.csv", len(rows) + 1, reason)
            rows.append(values)
    with open(path, "ab") as handle:  # bytes that are not UTF-8
        handle.write(b"csv-latin1,caf\xe9\r\n")
    expected.reject("in.csv", len(rows) + 1, "invalid UTF-8")
    with open(path, "ab") as handle:  # a quote that never closes: the rest is one reject
        handle.write(b'csv-open,"never closed\r\ncsv-swallowed,x\r\n')
    expected.reject("in.csv", len(rows) + 2, "unterminated quoted field from row")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # a BOM before the header
    return path


def write_parquet(root: Path, expected: Expected) -> Path:
    pairs = good("pq", 5, expected)
    bad = [
        (None, "null id", "id field 'id' must be a string, got null"),
        ("pq-null", None, "text field 'text' must be a string, got null"),
        ("pq-blank", "   ", "text is empty or whitespace only"),
        ("pq-nul", "a\x00b", "text contains NUL characters"),
        ("pq-big", BIG_TEXT, TOO_BIG),
        ("pq-00", "duplicate within the file", DUPLICATE),
        ("pq-latin1", b"caf\xe9", "is not valid UTF-8"),
    ]
    for doc_id, _text, reason in bad:
        expected.reject("in.parquet", len(pairs) + 1, reason)
        pairs.append((doc_id, _text))  # type: ignore[arg-type]
    path = root / "in.parquet"
    # The text column is binary (as some exporters write it): decoded as UTF-8 per row.
    texts = [t.encode() if isinstance(t, str) else t for _, t in pairs]
    table = pa.table({"id": [p[0] for p in pairs], "text": pa.array(texts, pa.binary())})
    pq.write_table(table, path, row_group_size=4)
    return path


def write_text_dir(root: Path, expected: Expected) -> Path:
    directory = root / "texts"
    directory.mkdir()
    for i in range(3):
        (directory / f"txt-{i}.txt").write_text(f"text file number {i}")
        expected.row(f"txt-{i}.txt")  # the id is the path relative to the directory
    bad = [
        ("empty.txt", b"", "text is empty or whitespace only"),
        ("latin1.txt", b"caf\xe9", "invalid UTF-8"),
        ("utf16.txt", "utf-16 text".encode("utf-16-le"), "text contains NUL characters"),
        ("big.txt", BIG_TEXT.encode(), TOO_BIG),
    ]
    for name, content, reason in bad:
        (directory / name).write_bytes(content)
        expected.reject(name, None, reason)
    # Links are never followed (a loop, a way out of the root); a FIFO would block a read.
    outside = root / "outside.txt"
    outside.write_text("a file outside the input directory")
    (directory / "leak.txt").symlink_to(outside)
    (directory / "loop").symlink_to(directory, target_is_directory=True)
    os.mkfifo(directory / "pipe.txt")
    for name in ("leak.txt", "loop"):
        expected.reject(name, None, "symbolic link, not followed")
    expected.reject("pipe.txt", None, "not a regular file")
    return directory


def hostile_inputs(tmp_path: Path, expected: Expected) -> list[Path]:
    """Every reader, each input with its own kinds of damage."""
    inputs = [
        write_jsonl(tmp_path, expected),
        write_truncated_gzip(tmp_path, expected),
        write_csv(tmp_path, expected),
        write_parquet(tmp_path, expected),
        write_text_dir(tmp_path, expected),
    ]
    not_gzip = tmp_path / "not-gzip.jsonl.gz"
    not_gzip.write_text('{"id": "plain", "text": "not compressed"}\n')
    inputs.append(not_gzip)
    expected.reject("not-gzip.jsonl.gz", 1, "read failed at line 1, the rest of the file is lost")
    return inputs


def check_output(out: Path, expected: Expected) -> list[dict]:
    """Every good id once, every bad record once at its place with its reason."""
    ids = ds.dataset(out, format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(expected.rows)
    rejects = [json.loads(line) for line in (out / "_rejects.jsonl").read_text().splitlines()]
    found = {}
    for reject in rejects:
        key = (Path(reject["source"]).name, reject.get("line", reject.get("row")))
        assert key not in found, f"rejected twice: {key}"
        found[key] = reject["reason"]
    assert set(found) == set(expected.rejects)
    for key, reason in expected.rejects.items():
        assert reason in found[key], (key, found[key])
    # Rejects that name an id name the right one.
    by_key = {(Path(r["source"]).name, r.get("line", r.get("row"))): r for r in rejects}
    assert by_key[("in.jsonl", 18)]["id"] == "jsonl-00"  # the duplicate
    assert by_key[("in.parquet", 10)]["id"] == "pq-big"
    counts = json.loads((out / "_manifest.json").read_text())["counts"]
    assert counts["input_records"] == counts["rows"] + counts["rejected"] == expected.records
    return rejects


def test_every_reader_bad_records_all_accounted_for(tmp_path, cli_env, workers, store):
    expected = Expected()
    inputs = hostile_inputs(tmp_path, expected)
    workers.start(1)
    out = tmp_path / "out"
    submitted = run_cli(
        "submit", *map(str, inputs), "--out", str(out), "--shard-docs", "500", env=cli_env
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    waited = run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320)
    assert waited.returncode == EXIT_REJECTS, waited.stdout + waited.stderr
    rejects = check_output(out, expected)
    status = json.loads(run_cli("status", job_id, "--json", env=cli_env).stdout)
    assert status["state"] == "completed"
    assert status["input_records"] == expected.records
    assert (status["documents_done"], status["rejected"]) == (len(expected.rows), len(rejects))


def test_m3pipe_run_on_the_same_corpus_exits_3_with_everything_accounted_for(tmp_path, cli_env):
    expected = Expected()
    inputs = hostile_inputs(tmp_path, expected)
    env = {k: v for k, v in cli_env.items() if k != "M3PIPE_BROKER_URL"}  # its own Redis
    ran = run_cli("run", *map(str, inputs), "--out", str(tmp_path / "out"), "-q", env=env)
    assert ran.returncode == EXIT_REJECTS, ran.stderr[-3000:]
    check_output(tmp_path / "out", expected)
