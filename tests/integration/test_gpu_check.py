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
        "engine:fp32", "engine:fp32-sync"}  # fmt: skip
    same = fixed["accuracy"]["fp32-sync_vs_fp32"]  # the overlap changes no output
    assert same["sparse_jaccard_min"] == 1.0 and same["sparse_max_weight_error"] == 0.0
    assert same["dense_cosine_min"] > 0.99999 and same["colbert_cosine_min"] > 0.99999
    rerank = json.loads((tmp_path / "rerank-cpu-random-tiny.json").read_text())
    assert rerank["engine"]["mfu"] > 0 and rerank["engine"]["matmul_peak"]["gflops"] > 0
    assert rerank["engine"]["compute_dtype"] == "float32" and "flagreranker" in rerank
    [(side, figures)] = rerank["engine_precisions"].items()  # the reranker's own precisions
    assert side == "engine:bf16-sdpa" and figures["compute_dtype"] == "bfloat16"
    assert figures["pairs"] == 40 and figures["pairs_per_second_vs_engine"] > 0
    ranking = figures["ranking_vs_engine"]
    assert -1 <= ranking["spearman_per_query_min"] <= ranking["spearman_per_query_mean"] <= 1
    assert 0 <= ranking["same_top_share"] <= 1 and figures["max_abs_score_difference_vs_engine"] > 0
    profiled = json.loads((tmp_path / "profile-cpu-random-tiny.json").read_text())
    assert set(profiled["runs"]) == {"float16", "float32"} and profiled["top_operators"]
    for run in profiled["runs"].values():
        assert run["tokens"] > 0 and run["stage_seconds"]["batches"] > 0
        assert abs(sum(v for k, v in run["stage_share"].items() if "thread" not in k) - 1) < 0.01
    assert (tmp_path / "profile-cpu-random-tiny.txt").read_text().strip()
    real = json.loads((tmp_path / "worker-cpu-random-tiny.json").read_text())
    stub = json.loads((tmp_path / "worker-cpu-stub-tiny.json").read_text())
    assert set(real["paths"]) == {"encode:float16"}
    assert set(stub["paths"]) == {"run:float16:slots2"}  # the dry run: two slots only
    for worker in (real, stub):
        assert all(p["documents"] == 24 and p["documents_per_second"] > 0
                   for p in worker["paths"].values())  # fmt: skip
        assert worker["stages"]["float16"]["documents"] == 24
