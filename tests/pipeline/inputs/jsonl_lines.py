"""Hypothesis strategies for JSONL inputs as a hostile producer meets them: documents with
few ids (many duplicates), long and multi-byte texts, kept fields, and every kind of bad
line."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import strategies as st

texts = st.one_of(
    st.integers(min_value=1, max_value=400).map(lambda n: "w" * n),
    st.integers(min_value=1, max_value=150).map(lambda n: "東" * n),  # 3 bytes a character
    st.text(max_size=12),  # control characters, surrogates, blanks...
)
document_lines = st.builds(
    lambda i, text, ascii_only, lang: json.dumps(
        {"id": f"d{i}", "text": text, **({"lang": lang} if lang else {})},
        ensure_ascii=ascii_only,
    ).encode("utf-8", "surrogatepass"),
    st.integers(min_value=0, max_value=8),
    texts,
    st.booleans(),
    st.sampled_from([None, "en", "東"]),
)
bad_lines = st.sampled_from(
    [
        b'{"id": "x", "text": "cut',
        b"[1, 2]",
        b'{"id": 5, "text": "int id"}',
        b'{"id": "", "text": "empty id"}',
        b'{"id": "n", "text": "\\u0000"}',
        b'{"id": "s", "text": "\\ud800"}',
        b'{"id": "u", "text": "caf\xe9"}',
        b'{"id": "t", "text": "t"} trailing',
        b'{"id": "w", "text": " \\t "}',
        b"",
        b"   ",
        b"\xff\xfe{",
    ]
)
huge_lines = st.integers(min_value=200, max_value=2000).map(
    lambda n: b'{"id": "big", "text": "' + b"x" * n + b'"}'
)
lines = st.lists(st.one_of(document_lines, document_lines, bad_lines, huge_lines), max_size=40)


# Input files: each its lines, whether it starts with a BOM, whether it ends with a newline.
jsonl_files = st.lists(st.tuples(lines, st.booleans(), st.booleans()), min_size=1, max_size=3)


def jsonl_bytes(body: list[bytes], bom: bool, last_newline: bool) -> bytes:
    data = (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(body)
    return data + b"\n" if last_newline and body else data


def write_inputs(folder: Path, drawn: list[tuple[list[bytes], bool, bool]]) -> list[Path]:
    """The drawn `jsonl_files` written as in0.jsonl, in1.jsonl... in `folder`."""
    paths = []
    for n, (body, bom, last_newline) in enumerate(drawn):
        path = folder / f"in{n}.jsonl"
        path.write_bytes(jsonl_bytes(body, bom, last_newline))
        paths.append(path)
    return paths
