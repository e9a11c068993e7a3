"""Rerank input: flat pairs and per-query candidates in JSONL, CSV and Parquet."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InputError
from pipeline.inputs.pairs import PairRecord
from pipeline.inputs.readers.formats import read_pair_records
from schemas.document import Reject


def results(path):
    return [item.result for item in read_pair_records(path)]


def test_jsonl_flat_and_grouped_records_with_every_kind_of_bad_pair(tmp_path):
    lines = [
        {"query_id": "q1", "query": "what", "doc_id": "d1", "passage": "an answer"},
        {
            "query_id": "q2",
            "query": "who",
            "candidates": [
                {"doc_id": "a", "passage": "first"},
                {"doc_id": "b", "passage": "  "},  # blank passage
                {"doc_id": "c"},  # no passage
                "not an object",
                {"doc_id": "e", "passage": "fine"},
            ],
        },
        {"query_id": "q3", "query": "", "candidates": [{"doc_id": "x", "passage": "p"}] * 2},
        {"query_id": "q4", "doc_id": "d", "passage": "no query"},
        {"query": "no id", "doc_id": "d", "passage": "p"},
        {"query_id": "q5", "query": "q", "candidates": []},
        {"query_id": "q6", "query": "nul\u0000", "doc_id": "d", "passage": "p"},
        [1, 2],
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json\n")
    got = results(path)
    flat, grouped = got[0], got[1]
    assert isinstance(flat, PairRecord) and not flat.grouped
    assert [(p.query_id, p.doc_id, p.passage) for p in flat.pairs] == [("q1", "d1", "an answer")]
    assert grouped.grouped and [p.doc_id for p in grouped.pairs] == ["a", "e"]
    assert [(r.query_id, r.id, r.line, r.reason) for r in grouped.rejects] == [
        ("q2", "b", 2, "candidate 1: passage is empty or whitespace only"),
        ("q2", "c", 2, "candidate 2: passage must be a string, got null"),
        ("q2", None, 2, "candidate 3: is a str, expected an object"),
    ]
    empty_query = got[2]  # each of its candidates is a rejected pair
    assert not empty_query.pairs
    assert [r.reason for r in empty_query.rejects] == ["query is empty or whitespace only"] * 2
    assert got[3].rejects[0].reason == "query must be a string, got null"
    assert got[4].rejects[0].reason == "query_id must be a string, got null"
    assert isinstance(got[5], Reject) and got[5].reason == "candidates must be a non-empty list"
    assert "NUL" in got[6].rejects[0].reason
    assert isinstance(got[7], Reject) and "expected an object" in got[7].reason
    assert isinstance(got[8], Reject) and got[8].reason.startswith("malformed JSON")


def test_csv_holds_flat_pairs(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("query_id,query,doc_id,passage\nq1,what,d1,answer\nq1,what,d2,\n")
    got = results(path)
    assert [p.doc_id for p in got[0].pairs] == ["d1"]
    assert got[1].rejects[0].row == 2 and got[1].rejects[0].reason.startswith("passage is empty")
    bad = tmp_path / "bad.csv"
    bad.write_text("query_id,query,doc,passage\n")
    with pytest.raises(InputError, match="no column 'doc_id'"):
        results(bad)


def test_parquet_grouped_candidates_and_integer_ids(tmp_path):
    table = pa.table(
        {
            "query_id": [1, 2],
            "query": ["q one", "q two"],
            "candidates": [
                [{"doc_id": "a", "passage": "pa"}, {"doc_id": "b", "passage": "pb"}],
                [{"doc_id": "c", "passage": "pc"}],
            ],
        }
    )
    pq.write_table(table, tmp_path / "g.parquet")
    got = results(tmp_path / "g.parquet")
    assert [[(p.query_id, p.doc_id) for p in r.pairs] for r in got] == [
        [("1", "a"), ("1", "b")],
        [("2", "c")],
    ]
    flat = pa.table({"query_id": ["q"], "query": ["x"], "doc_id": [7], "passage": ["p"]})
    pq.write_table(flat, tmp_path / "f.parquet")
    assert results(tmp_path / "f.parquet")[0].pairs[0].doc_id == "7"


def test_a_text_directory_is_not_rerank_input(tmp_path):
    with pytest.raises(InputError, match=r"not \.txt files"):
        read_pair_records(tmp_path)
