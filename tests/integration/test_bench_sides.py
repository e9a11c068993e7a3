"""The engine and reranker benchmarks' sides as the GPU check runs them, beyond its dry run:
a side that fails is reported while the others are saved, and the reranker's precisions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_side_that_fails_is_reported_and_the_others_still_saved(tmp_path):
    # fp16 is refused on the CPU: FlagEmbedding's side fails, the engine's figures remain.
    out = tmp_path / "engine.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_engine", "--model", "random:tiny",
         "--docs", "4", "--long-docs", "0", "--precisions", "fp32", "--flag-precision", "fp16",
         "--peak-seconds", "0.05", "--peak-square", "512", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed_sides"] == ["flagembedding:fp16"]
    assert report["sides"]["engine:fp32"]["tokens"] == report["corpus"]["tokens"]


def test_the_reranker_bench_compares_engine_precisions(tmp_path):
    out = tmp_path / "rerank.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_rerank", "--model", "random:tiny",
         "--pairs", "12", "--per-query", "4", "--precision", "fp32",
         "--engine-precisions", "bf16-sdpa", "--no-flag", "--peak-seconds", "0.05",
         "--peak-square", "512", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "flagreranker" not in report and report["engine"]["compute_dtype"] == "float32"
    [(side, figures)] = report["engine_precisions"].items()
    assert side == "engine:bf16-sdpa" and figures["compute_dtype"] == "bfloat16"
    assert figures["pairs"] == 12 and figures["pairs_per_second_vs_engine"] > 0
    ranking = figures["ranking_vs_engine"]
    assert -1 <= ranking["spearman_per_query_min"] <= ranking["spearman_per_query_mean"] <= 1
    assert 0 <= ranking["same_top_share"] <= 1 and figures["max_abs_score_difference_vs_engine"] > 0
