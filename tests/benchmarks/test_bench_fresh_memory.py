"""benchmarks/bench_fresh_memory.py on a small buffer: every way is timed and reported."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.bench_fresh_memory import fill_once, main, ways


def test_every_way_fills_a_fresh_buffer_and_is_reported(tmp_path):
    out = tmp_path / "fresh.json"
    main(["--megabytes", "2", "--repeats", "1", "--kept", "2", "--idle", "0", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["ways"]) == {"shared", "small pages", "huge pages", "numpy", "m3pipe"}
    for got in report["ways"].values():
        assert got["first_fill_wall_ms"] > 0 < got["later_fill_wall_ms"]
    kept = report["kept_in_fresh_processes"]["first_fill_wall_ms"]
    assert set(kept) == set(report["ways"]) and all(len(walls) == 2 for walls in kept.values())


def test_each_way_gives_writable_memory_of_the_asked_size():
    source = np.arange(4096 * 3, dtype=np.uint8)
    for make in ways().values():
        first, cpu, again = fill_once(make, source)
        assert first > 0 and cpu >= 0 and again > 0
        buffer = make(100_000)
        array = np.frombuffer(buffer, np.uint8) if not isinstance(buffer, np.ndarray) else buffer
        assert array.nbytes >= 100_000
        array[:] = 7
        assert int(array[-1]) == 7
