"""benchmarks/bench_worker.py's stage split, on a few documents (the whole-process timings
are what the script is run for; here only that its pieces measure what they say)."""

from __future__ import annotations

import pytest

from benchmarks.bench_worker import stages, write_corpus


@pytest.mark.slow
def test_the_stages_of_one_shard_are_timed_per_document(tmp_path, model_cache):
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, 12, 64)
    split = stages(corpus, 64, "float16", model_cache, shard=10)
    assert split["documents"] == 10
    assert set(split["cpu_ms_per_document"]) == {
        "tokenize", "engine (forward, heads, placing vectors, table)", "parquet write"}  # fmt: skip
    assert all(ms >= 0 for ms in split["cpu_ms_per_document"].values())
    # 63 ColBERT vectors of 1024 float16 values a document at the least (before zstd)
    assert split["part_bytes_per_document"] > 63 * 1024


def test_slots_apply_to_the_run_path_only_and_sinks_and_waits_to_every_path():
    from benchmarks.bench_worker import sides

    assert sides("encode,run", "exact", "1,2", "direct") == [
        ("encode", "exact", "1", "direct", "sleep"), ("run", "exact", "1", "direct", "sleep"),
        ("run", "exact", "2", "direct", "sleep")]  # fmt: skip
    assert sides("encode", "exact", "1", "direct,cached") == [
        ("encode", "exact", "1", "direct", "sleep"),
        ("encode", "exact", "1", "cached", "sleep")]  # fmt: skip
    assert sides("run", "exact", "1", "direct", "sleep,spin") == [
        ("run", "exact", "1", "direct", "sleep"),
        ("run", "exact", "1", "direct", "spin")]  # fmt: skip


def test_the_disk_is_measured_as_a_part_is_written_and_leaves_nothing(tmp_path):
    from benchmarks.bench_worker import disk_bandwidth

    rate = disk_bandwidth(tmp_path, total_bytes=24 << 20, sync_bytes=16 << 20)
    assert rate > 0
    assert list(tmp_path.iterdir()) == []


def test_a_runs_disk_floor_is_its_bytes_over_the_disks_rate():
    from benchmarks.bench_worker import disk_floor

    figures = {"part_bytes": 3_000_000, "wall_seconds": 6.0, "compute_span_seconds": 4.0}
    assert disk_floor(figures, 1_000_000.0) == {
        "disk_floor_seconds": 3.0, "disk_floor_share_of_wall": 0.5,
        "disk_floor_share_of_span": 0.75}  # fmt: skip
    assert disk_floor({**figures, "compute_span_seconds": None}, 1e6)[
        "disk_floor_share_of_span"] is None  # fmt: skip
