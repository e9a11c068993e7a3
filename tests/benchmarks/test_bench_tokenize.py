"""benchmarks/bench_tokenize.py on a few short documents: each corpus timed in each mode and
described."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_tokenize import main


@pytest.mark.slow  # a benchmark run, a tokenizer built: the integration tier
def test_each_corpus_is_timed_in_each_mode_with_what_was_kept(tmp_path, model_cache):
    out = tmp_path / "tokenize.json"
    main(["--model", "stub:tiny", "--documents", "3", "--max-length", "16",
          "--long-chars", "400,900", "--modes", "truncate,chunk", "--repeats", "1",
          "--cache-dir", str(model_cache), "--out", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report["corpora"]) == {"bench", "latin-400-chars", "latin-900-chars"}
    for figures in report["corpora"].values():
        whole = figures["tokens_a_document_whole"]
        assert figures["truncate"]["tokens_a_document_kept"] == 16 < whole + 2  # truncated
        # chunks of 14 content tokens, with <s> and </s> each: every token kept
        assert figures["chunk"]["tokens_a_document_kept"] >= whole + 2 * -(-whole // 14) - 3
        assert figures["truncate"]["cpu_ms_a_document"] > 0 < figures["chunk"]["cpu_ms_a_document"]
    assert report["corpora"]["latin-900-chars"]["characters_a_document"] == 900
