"""benchmarks/bench_redis_wait.py on a few shards: both sides mark every shard done, and the
WAIT side's timings are its own (what docs/deploy.md quotes as WAIT's cost a shard)."""

from __future__ import annotations

import json

from benchmarks.bench_redis_wait import main


def test_the_wait_benchmark_times_both_sides_on_a_real_replica(tmp_path):
    out = tmp_path / "wait.json"
    main(["--shards", "8", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["sides"]) == {"mark_done", "mark_done + WAIT 1"}
    for side in report["sides"].values():
        assert 0 < side["median_ms"] <= side["p99_ms"]
    assert report["wait_cost_ms"] == round(
        report["sides"]["mark_done + WAIT 1"]["median_ms"]
        - report["sides"]["mark_done"]["median_ms"],
        4,
    )
