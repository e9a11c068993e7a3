"""`--resume` with real processes: an interrupted job is finished by redoing what is missing."""

from __future__ import annotations

import json
import time

import pyarrow.dataset as ds

from pipeline.storage.output_dir import MANIFEST, part_entries
from tests.integration.conftest import corpus_records, run_cli, slow_stub, write_jsonl

SHARDS = 12


def part_times(out):
    return {p.name: p.stat().st_mtime_ns for p in sorted(out.glob("part-*.parquet"))}


def test_interrupted_job_resumed_by_submit_then_by_run_without_redis(
    tmp_path, cli_env, stub_built, workers, store
):
    slow_stub(cli_env, stub_built, 1000)  # ~0.5 s a shard: cancelled with most to do
    records = corpus_records(SHARDS * 5, long=False)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    out = tmp_path / "out"
    args = ("--out", str(out), "--shard-docs", "5")
    submitted = run_cli("submit", str(corpus), *args, env=cli_env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]

    # A worker takes a few shards, then the job is cancelled: the rest is never encoded.
    workers.start(1)
    deadline = time.monotonic() + 240
    while store.status(job_id).shards.done < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    store.cancel(job_id)  # at once: `m3pipe cancel` would give the worker another second
    while store.status(job_id).shards.running:  # the shard in flight finishes
        time.sleep(0.05)
    kept = part_times(out)
    assert 3 <= len(kept) < SHARDS and not (out / MANIFEST).exists()

    resumed = run_cli("submit", str(corpus), *args, "--resume", env=cli_env)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == job_id
    assert f"{SHARDS} shard(s) ({len(kept)} already done, kept)" in resumed.stderr
    waited = run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320)
    assert waited.returncode == 0, waited.stderr
    after = part_times(out)
    assert len(after) == SHARDS
    assert {name: after[name] for name in kept} == kept  # kept files were not rewritten
    # The kept shards were never delivered again (--resume registers the job afresh).
    delivered = [shard for shard in range(SHARDS) if store.attempts(job_id, shard)]
    assert sorted(set(range(SHARDS)) - set(delivered)) == [int(name[5:10]) for name in kept]
    workers.stop_all()

    # Later, with the cluster's Redis gone: `m3pipe run --resume` on its embedded Redis
    # redoes the one file that was deleted, and nothing else.
    (out / "part-00002.parquet").unlink()
    before = part_times(out)
    env = {k: v for k, v in cli_env.items() if k != "M3PIPE_BROKER_URL"}
    ran = run_cli(
        "run", str(corpus), *args, "--resume", "--workers", "1", "--device", "cpu", "-q", env=env
    )
    assert ran.returncode == 0, ran.stderr
    after = part_times(out)
    assert {name: after[name] for name in before} == before
    assert sorted(after) == [f"part-{i:05d}.parquet" for i in range(SHARDS)]
    table = ds.dataset(out, format="parquet").to_table(columns=["id"])
    assert sorted(table.column("id").to_pylist()) == [r["id"] for r in records]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["job"]["job_id"] == job_id
    assert (manifest["counts"]["rows"], len(part_entries(out))) == (len(records), SHARDS)
