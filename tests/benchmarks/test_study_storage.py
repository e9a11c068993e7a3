"""benchmarks/study_storage.py and its retrieval set, on random:tiny (the trained proxy is a
download the study itself makes)."""

from __future__ import annotations

import json

import pytest

from benchmarks.cloze_set import SENTENCE, cloze_set
from benchmarks.study_storage import main


@pytest.mark.slow
def test_each_query_is_cut_from_its_passage_and_the_set_is_the_same_each_time():
    first, again = cloze_set(60, 15), cloze_set(60, 15)
    assert first == again
    assert len(first.passages) == 60 and len(first.queries) == 15
    assert len(set(first.passages.values())) == 60
    for qid, sentence in first.queries.items():
        passage = first.passages[first.relevant[qid]]
        assert sentence not in SENTENCE.split(passage) and len(sentence.split()) >= 6
    with pytest.raises(ValueError, match="standard library has"):  # never fewer, silently
        cloze_set(10**6, 10)
    with pytest.raises(ValueError, match="10 passages give"):
        cloze_set(10, 11)


@pytest.mark.slow
def test_the_study_measures_every_form_against_its_reference(tmp_path):
    out = tmp_path / "storage.json"
    main(["--model", "random:tiny", "--passages", "40", "--queries", "10", "--max-length", "64",
          "--out", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert report["trained"] is False and "dense-mean" not in report
    forms = {
        "dense": {"float32", "float16", "int8", "binary", "binary-hamming"},
        "colbert": {
            "float16",
            "int8",
            "binary",
            "binary-hamming",
            "pool2",
            "pool3",
            "pool2+int8",
            "pool2+binary",
        },
        "sparse": {"all", "top64", "top32", "top16", "weight>=0.1"},
    }
    for name, expected in forms.items():
        assert set(report[name]) == expected
        for figure in report[name].values():
            assert 0 <= figure["mrr@10"] <= 1 and 0 <= figure["top10_overlap"] <= 1
    dense, colbert = report["dense"], report["colbert"]
    assert dense["float16"]["mrr_ratio"] == 1.0 and colbert["float16"]["top10_overlap"] == 1.0
    assert dense["binary"]["bytes_ratio"] == colbert["binary"]["bytes_ratio"] == 0.0625
    assert 0.45 < colbert["pool2"]["bytes_ratio"] <= 0.55  # one vector for two tokens
    assert colbert["pool2+int8"]["bytes_ratio"] < colbert["pool2"]["bytes_ratio"] / 1.8
    assert report["timings"]["pool x2 cpu_ms_per_document"] > 0
