"""benchmarks/gpu_check.sh, dry run on CPU: every step of the GPU check but CUDA itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_runs_every_step_and_writes_its_figures(tmp_path):
    env = {**os.environ, "RESULTS": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    engine = json.loads((tmp_path / "engine-cpu-random-tiny.json").read_text())
    assert set(engine["sides"]) == {"engine:auto", "engine:fp32", "flagembedding:fp32"}
    for side in engine["sides"].values():
        assert side["tokens"] == engine["corpus"]["tokens"] and side["seconds"] > 0
        assert side["matmul_peak"]["gflops"] > 0 and 0 < side["mfu"] < 1.5
    agreement = engine["accuracy"]["auto_vs_fp32"]
    assert agreement["dense_cosine_min"] > 0.99 and agreement["sparse_jaccard_min"] > 0.9
    fixed = json.loads((tmp_path / "engine-cpu-random-tiny-512.json").read_text())
    assert fixed["corpus"]["max_tokens"] == 512 and fixed["corpus"]["docs"] == 8
    assert fixed["failed_sides"] == [] and set(fixed["sides"]) == {
        "engine:fp32", "engine:fp32-sync", "flagembedding:fp32"}  # fmt: skip
    same = fixed["accuracy"]["fp32-sync_vs_fp32"]  # the overlap changes no output
    assert same["sparse_jaccard_min"] == 1.0 and same["sparse_max_weight_error"] == 0.0
    assert same["dense_cosine_min"] > 0.99999 and same["colbert_cosine_min"] > 0.99999
    rerank = json.loads((tmp_path / "rerank-cpu-random-tiny.json").read_text())
    assert rerank["engine"]["mfu"] > 0 and rerank["engine"]["matmul_peak"]["gflops"] > 0
    profiled = json.loads((tmp_path / "profile-cpu-random-tiny.json").read_text())
    assert set(profiled["runs"]) == {"float16", "float32"} and profiled["top_operators"]
    for run in profiled["runs"].values():
        assert run["tokens"] > 0 and run["stage_seconds"]["batches"] > 0
        assert abs(sum(v for k, v in run["stage_share"].items() if "thread" not in k) - 1) < 0.01
    assert (tmp_path / "profile-cpu-random-tiny.txt").read_text().strip()
    real = json.loads((tmp_path / "worker-cpu-random-tiny.json").read_text())
    stub = json.loads((tmp_path / "worker-cpu-stub-tiny.json").read_text())
    assert set(real["paths"]) == {"encode:float16"} and set(stub["paths"]) == {"run:float16"}
    for worker in (real, stub):
        assert all(p["documents"] == 24 and p["documents_per_second"] > 0
                   for p in worker["paths"].values())  # fmt: skip
        assert worker["stages"]["float16"]["documents"] == 24


def test_a_side_that_fails_is_reported_and_the_others_still_saved(tmp_path):
    # fp16 is refused on the CPU: FlagEmbedding's side fails, the engine's figures remain.
    out = tmp_path / "engine.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_engine.py"), "--model", "random:tiny",
         "--docs", "4", "--long-docs", "0", "--precisions", "fp32", "--flag-precision", "fp16",
         "--peak-seconds", "0.05", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed_sides"] == ["flagembedding:fp16"]
    assert report["sides"]["engine:fp32"]["tokens"] == report["corpus"]["tokens"]


def test_the_reranker_bench_compares_engine_precisions(tmp_path):
    out = tmp_path / "rerank.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_rerank.py"), "--model", "random:tiny",
         "--pairs", "12", "--per-query", "4", "--precision", "fp32",
         "--engine-precisions", "bf16-sdpa", "--no-flag", "--peak-seconds", "0.05",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
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
