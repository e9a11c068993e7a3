"""benchmarks/bench_tokenize.py on a few short documents: each corpus timed and described."""

from __future__ import annotations

import json

from benchmarks.bench_tokenize import main


def test_each_corpus_is_timed_with_what_was_kept(tmp_path, model_cache):
    out = tmp_path / "tokenize.json"
    main(["--model", "random:tiny", "--documents", "3", "--max-length", "16",
          "--long-chars", "400", "--repeats", "1", "--cache-dir", str(model_cache),
          "--out", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert set(report["corpora"]) == {"bench", "latin-400-chars"}
    for figures in report["corpora"].values():
        assert figures["cpu_ms_a_document"] > 0
        assert figures["tokens_a_document_kept"] == 16  # every document is truncated
        assert figures["tokens_a_document_whole"] > 14
    assert report["corpora"]["latin-400-chars"]["characters_a_document"] == 400
