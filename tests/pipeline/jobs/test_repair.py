"""`m3pipe repair` after Redis lost writes (issue 30, item 2). The loss is made as a failover
makes it: the job's keys are saved while shard 2 runs, four more shards finish, and the
saved keys are put back (the promoted replica's view). Repair marks done the shards whose
parts are written, sends again from the job's plan only the shards that need it (reading
only their byte ranges again), and the job ends with every id once."""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest

from pipeline.cli.main import main
from pipeline.jobs.plan import PLAN_CHUNK, PlanReader
from pipeline.jobs.repair import repair_job
from pipeline.runtime.shard_runner import run_shard
from pipeline.storage.location import open_location
from pipeline.storage.output_dir import PLAN_DIR
from schemas.job import JobState, ShardState
from tests.pipeline.runtime.queue_job import runtime_of, submitted


@pytest.fixture
def runtime(store, tiny):
    return runtime_of(store, tiny)


def saved_keys(raw, job_id: str) -> dict[bytes, bytes]:
    return {key: raw.dump(key) for key in raw.scan_iter(f"m3pipe:job:{job_id}*")}


def put_back(raw, job_id: str, saved: dict[bytes, bytes]) -> None:
    for key in list(raw.scan_iter(f"m3pipe:job:{job_id}*")):
        raw.delete(key)
    for key, value in saved.items():
        raw.restore(key, 0, value, replace=True)


def test_repair_after_lost_writes_resends_only_what_is_missing(
    tmp_path, store, runtime, redis_server
):
    raw = redis_server.client()
    job_id, sent = submitted(tmp_path, store, documents=80)  # 8 shards of 10, by reference
    assert (tmp_path / "out" / PLAN_DIR / "plan-00000.jsonl").exists()
    for message in sent[:2]:
        run_shard(message, runtime)
    store.mark_shard(job_id, 2, ShardState.RUNNING, ["queued"], {"worker": "w@host"})
    replica = saved_keys(raw, job_id)  # what the replica had when the primary went
    for message in sent[2:6]:
        assert run_shard(message, runtime).state is ShardState.DONE
    put_back(raw, job_id, replica)  # promoted: shards 2-5 written, Redis says otherwise
    assert store.status(job_id).shards.done == 2

    published: list = []
    report = repair_job(store, job_id, lambda message, queue, priority: published.append(message))
    assert report.reconciled == 4 and report.unplanned == []
    assert published == sent[6:]  # exactly the shards never written, as first sent
    corpus = tmp_path / "d.jsonl"
    assert report.bytes_to_read == sum(
        s.end - s.start for m in sent[6:] for s in m.ref.segments
    ) < corpus.stat().st_size / 3  # fmt: skip
    assert store.status(job_id).shards.done == 6
    for message in published:
        run_shard(message, runtime)
    assert store.state(job_id) is JobState.COMPLETED
    out = tmp_path / "out"
    ids = ds.dataset(out, format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == sorted(f"d{i}" for i in range(80))
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["documents"] == 80 and manifest["parts"] == 8
    assert not (out / PLAN_DIR / "plan-00000.jsonl").exists()  # removed at the job's end
    # Once ended, repair has nothing to do.
    again = repair_job(store, job_id, lambda *_: pytest.fail("sent after the end"))
    assert again.final is JobState.COMPLETED and again.resent == again.reconciled == 0


def test_a_lost_registration_is_registered_again_and_a_stale_part_is_not_taken(
    tmp_path, store, runtime, redis_server
):
    raw = redis_server.client()
    job_id, sent = submitted(tmp_path, store, documents=30)
    run_shard(sent[0], runtime)
    # Shard 1's state and registration lost; shard 2 has a part of another job.
    raw.setrange(f"m3pipe:job:{job_id}:shard-states", 1, b"\0")
    raw.hdel(f"m3pipe:job:{job_id}:shard-digest", "1")
    other = tmp_path / "other"
    other.mkdir()
    _, other_sent = submitted(other, store, documents=30)
    run_shard(other_sent[2], runtime)
    (tmp_path / "out" / "part-00002.parquet").write_bytes(
        (other / "out" / "part-00002.parquet").read_bytes()
    )
    published: list = []
    report = repair_job(store, job_id, lambda message, queue, priority: published.append(message))
    assert report.reconciled == 0 and published == sent[1:]
    assert store.shard_state(job_id, 1) == ShardState.QUEUED.value  # registered again
    for message in published:
        assert run_shard(message, runtime).state is ShardState.DONE
    assert store.state(job_id) is JobState.COMPLETED
    ids = ds.dataset(tmp_path / "out", format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == sorted(f"d{i}" for i in range(30))


def test_shards_that_carry_their_documents_are_named_for_submit_resume(
    tmp_path, store, runtime, redis_server, monkeypatch, capsys
):
    job_id, _ = submitted(tmp_path, store, documents=20, inline_shards=True)
    assert PlanReader(open_location(tmp_path / "out")).message(0) is None  # not copied
    monkeypatch.setenv("M3PIPE_BROKER_URL", redis_server.url)
    monkeypatch.setattr(
        "workers.app.shard_publisher", lambda settings: lambda m, q, p: pytest.fail("sent")
    )
    assert main(["repair", job_id]) == 1
    err = capsys.readouterr().err
    assert "0 shard(s) found written and marked done, 0 sent again" in err
    assert "2 shard(s) not in the job's plan (0, 1)" in err and "submit --resume" in err


def test_the_plan_is_written_a_chunk_at_a_time_and_read_back(tmp_path):
    from pipeline.jobs.plan import PlanWriter
    from schemas.job import ShardMessage

    out = open_location(tmp_path)
    writer = PlanWriter(out)
    messages = [
        ShardMessage.model_validate({"job_id": "job-1", "shard": n, "documents": [
            {"id": str(n), "text": "x"}]}) for n in (0, PLAN_CHUNK - 1, PLAN_CHUNK)
    ]  # fmt: skip
    for message in messages:
        writer.add(message)
    assert (tmp_path / PLAN_DIR / "plan-00000.jsonl").exists()  # flushed when full
    assert not (tmp_path / PLAN_DIR / "plan-00001.jsonl").exists()
    writer.flush()
    lines = (tmp_path / PLAN_DIR / "plan-00001.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"shard": PLAN_CHUNK, "carried": True}]
    (tmp_path / PLAN_DIR / "plan-00000.jsonl").write_text('garbage\n{"shard": 3}\n')
    reader = PlanReader(out)
    assert reader.message(0) is None and reader.message(3) is None  # damaged: unplanned


@pytest.mark.slow
def test_a_failover_losing_the_last_30_of_120_shards_is_repaired_by_one_command(
    tmp_path, store, runtime, redis_server
):
    """Issue 30's target at its scale: a 120-shard job; the promoted replica had 60 shards
    done, the old primary had finished 30 more (their parts written) when it went. One
    command (repair) ends it with every id once, reading again only the input of shards
    that never ran: none of the 30 whose writes were lost."""
    raw = redis_server.client()
    job_id, sent = submitted(tmp_path, store, documents=1200, max_queued=200)  # 120 of 10
    assert len(sent) == 120
    for message in sent[:60]:
        run_shard(message, runtime)
    replica = saved_keys(raw, job_id)
    for message in sent[60:90]:
        assert run_shard(message, runtime).state is ShardState.DONE
    put_back(raw, job_id, replica)  # the last 30 shards' writes lost
    assert store.status(job_id).shards.done == 60

    published: list = []
    report = repair_job(store, job_id, lambda message, queue, priority: published.append(message))
    assert report.reconciled == 30 and report.unplanned == []
    assert published == sent[90:]  # never ran: their input is read once, as it would be
    never_ran = sum(s.end - s.start for m in sent[90:] for s in m.ref.segments)
    assert report.bytes_to_read == never_ran  # nothing of the 30 lost shards read again
    for message in [*published, *sent[90:]]:  # the queue's copies come too: skipped
        run_shard(message, runtime)
    assert store.state(job_id) is JobState.COMPLETED
    ids = ds.dataset(tmp_path / "out", format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == sorted(f"d{i}" for i in range(1200))
    assert store.status(job_id).documents_done == 1200
