"""benchmarks/bench_worker_start.py: a real worker process started against a real Redis
reports its start-up time."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_worker_start import main


@pytest.mark.slow  # a worker process and Redis started
def test_a_worker_start_is_timed_to_its_ready_line(tmp_path):
    out = tmp_path / "start.json"
    main(["--starts", "1", "--model", "stub:tiny", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["starts"] == 1 and len(report["seconds_each"]) == 1
    assert 0 < report["median_seconds"] == report["seconds_each"][0] < 120
