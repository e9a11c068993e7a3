"""The engine benchmark's sides as the GPU check runs them, beyond its dry run: a side that
fails is reported while the others are saved. (The reranker's engine precisions are
compared in the dry run itself: tests/integration/test_gpu_check.py.)"""

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
