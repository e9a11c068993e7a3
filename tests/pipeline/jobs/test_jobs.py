"""Job state in a real Redis: shard transitions, exact counters, final states."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest

from pipeline.errors import JobNotFound, OutputDirError
from pipeline.jobs.finish import finalize_if_complete
from pipeline.jobs.keys import JOBS_INDEX, job_key
from pipeline.jobs.shard_report import ShardReport
from pipeline.jobs.store import ABSENT
from pipeline.storage.location import open_location
from pipeline.storage.output_dir import part_entries, read_shard_log
from pipeline.storage.output_lease import take_lease
from pipeline.storage.sink import part_name
from schemas.job import JobSpec, JobState, ShardState
from schemas.options import EncodeOptions

Q, R, D, F = ShardState.QUEUED, ShardState.RUNNING, ShardState.DONE, ShardState.FAILED
ACTIVE = (Q.value, R.value)


def make_spec(out, job_id="job-1") -> JobSpec:
    """A job writing to `out`, which the first job made here owns, as submit leaves it."""
    Path(out).mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OutputDirError):  # a second job of a test only shows in Redis
        take_lease(open_location(out), command="submit", job_id=job_id)
    return JobSpec(
        job_id=job_id, inputs=["in.jsonl"], out=str(out), model="random:tiny",
        options=EncodeOptions(), queue="m3pipe", shard_docs=10, shard_bytes=4096,
        max_queued=4, created_at=time.time(),
    )  # fmt: skip


def test_transitions_keep_counters_exact_under_redelivery(store, tmp_path):
    store.create(make_spec(tmp_path))
    with pytest.raises(ValueError, match="already exists"):
        store.create(make_spec(tmp_path))
    for shard in range(3):
        assert store.mark_shard("job-1", shard, Q, [ABSENT]) == (True, ABSENT)
    assert store.mark_shard("job-1", 0, Q, [ABSENT]) == (False, "queued")  # not twice
    assert store.status("job-1").shards.queued == 3
    assert store.mark_shard("job-1", 0, R, ACTIVE)[0]
    assert store.state("job-1") is JobState.RUNNING
    assert store.mark_shard("job-1", 0, R, ACTIVE) == (True, "running")  # redelivered
    report = ShardReport(documents=10, rows=10, tokens=99, part_bytes=1)
    assert store.mark_done("job-1", 0, ACTIVE, report)[0]
    # A late duplicate of the same shard neither runs nor counts again.
    assert store.mark_shard("job-1", 0, R, ACTIVE) == (False, "done")
    assert store.mark_done("job-1", 0, ACTIVE, report) == (False, "done")
    with pytest.raises(ValueError, match="mark_done"):  # done needs its report
        store.mark_shard("job-1", 1, D, ACTIVE)
    status = store.status("job-1")
    assert (status.shards.queued, status.shards.running, status.shards.done) == (2, 0, 1)
    assert (status.documents_done, status.tokens_done) == (10, 99)
    with pytest.raises(JobNotFound):
        store.status("nope")


def test_job_ends_once_every_shard_ended_and_manifest_lists_files(store, tmp_path):
    store.create(make_spec(tmp_path))
    for shard in range(2):
        store.mark_shard("job-1", shard, Q, [ABSENT], {"documents": 1})
    (tmp_path / "part-00000.parquet").write_bytes(b"x")
    store.mark_done("job-1", 0, ACTIVE, ShardReport(documents=1, rows=1, tokens=5, part_bytes=1))
    store.mark_shard("job-1", 1, F, ACTIVE, {"error": "boom"})
    assert finalize_if_complete(store, "job-1") is None  # the producer has not finished
    store.set_submitted("job-1", shards=2, documents=2, input_records=3, rejected=1)
    assert finalize_if_complete(store, "job-1") is JobState.COMPLETED_WITH_FAILURES
    assert store.end("job-1", JobState.CANCELLED) is JobState.COMPLETED_WITH_FAILURES
    import json

    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert [f["name"] for f in part_entries(tmp_path)] == ["part-00000.parquet"]
    assert manifest["failed_shards"][0]["error"] == "boom"
    assert manifest["counts"]["input_records"] == 3


def test_missing_output_file_is_not_reported_as_done(store, tmp_path):
    store.create(make_spec(tmp_path))
    store.mark_shard("job-1", 0, Q, [ABSENT])
    store.mark_done("job-1", 0, ACTIVE, ShardReport(documents=1, rows=1, tokens=5, part_bytes=1))
    store.set_submitted("job-1", shards=1, documents=1, input_records=1, rejected=0)
    assert finalize_if_complete(store, "job-1") is JobState.FAILED
    assert store.shard_states("job-1") == {0: F}


def test_cancel_is_final(store, tmp_path):
    store.create(make_spec(tmp_path))
    assert store.cancel("job-1") is JobState.CANCELLED
    assert store.finish_if_complete("job-1") is JobState.CANCELLED
    with pytest.raises(JobNotFound):
        store.cancel("other")


def test_the_worker_record_is_written_and_read_through_the_store(store):
    store.note_busy("w@h", "job/3", 100.0)  # a marker left by a pool process killed mid-shard
    store.forget_worker("w@h")
    assert store.worker_record("w@h") == {}
    store.register_worker("w@h", {"model": "random:tiny", "pid": 7, "ready_at": 1.5}, ttl=60)
    store.note_worker_field("w@h", "rerank_load_seconds", 2.25)
    assert store.worker_record("w@h") == {
        "model": "random:tiny",
        "pid": "7",
        "ready_at": "1.5",
        "rerank_load_seconds": "2.25",
    }
    assert 0 < store.redis.ttl("m3pipe:worker:w@h") <= 60
    store.note_busy("w@h", "job/4", 200.0)
    assert store.worker_record("w@h")["shard"] == "job/4"
    store.note_idle("w@h")
    assert "shard" not in store.worker_record("w@h")


def test_each_slot_of_a_worker_keeps_its_own_shard_marker_and_the_probe_reads_them_all(store):
    from pipeline.ops.probe import worker_problem

    store.register_worker("w@h", {"model": "random:tiny"}, ttl=60)
    store.note_busy("w@h", "job/1", time.time(), slot=0)
    store.note_busy("w@h", "job/2", time.time() - 500, slot=1)  # held far too long
    record = store.worker_record("w@h")
    assert (record["shard"], record["shard:1"]) == ("job/1", "job/2")
    problem = worker_problem(store, "w@h", max_shard_seconds=100)
    assert problem is not None and "job/2" in problem and "wedged" in problem
    store.forget_slot("w@h", 1)  # slot 1's pool process was replaced
    record = store.worker_record("w@h")
    assert "shard:1" not in record and record["shard"] == "job/1"
    assert worker_problem(store, "w@h", max_shard_seconds=100) is None
    store.note_idle("w@h", slot=0)
    assert not {"shard", "shard_started"} & set(store.worker_record("w@h"))


def test_an_ended_shard_keeps_no_owner_token_or_retry_message(store):
    token = store.take_ownership("job-1", 3)
    store.keep_retry_letter("job-1", 3, "{}")
    store.release_shard("job-1", 3)
    assert store.retry_letter("job-1", 3) is None
    assert not store.owns("job-1", 3, token)
    assert store.redis.hlen("m3pipe:job:job-1:shard-owner") == 0


def test_an_ended_jobs_keys_expire_after_its_ttl_and_leave_the_index(store, tmp_path):
    store.create(make_spec(tmp_path), ttl=3600)
    store.mark_shard("job-1", 0, Q, [ABSENT], {"documents": 1})
    store.mark_shard("job-1", 0, F, ACTIVE, {"error": "boom"})
    store.mark_shard("job-1", 250, Q, [ABSENT], {"documents": 1})  # a third bucket
    store.mark_shard("job-1", 250, F, ACTIVE, {"error": "boom"})
    store.mark_shard("job-1", 130, Q, [ABSENT], {"documents": 1})
    store.mark_done("job-1", 130, [Q.value], ShardReport(1, 0, 0, 0))  # its info: its counts
    store.dead_letter("job-1", 0, '{"message": 1}')
    keys = sorted(store.redis.scan_iter("m3pipe:job:job-1*"))
    assert len(keys) == 6 and all(store.redis.ttl(key) == -1 for key in keys)  # running: kept
    assert {"m3pipe:job:job-1:shard-info:0", "m3pipe:job:job-1:shard-info:2"} <= set(keys)
    assert {"m3pipe:job:job-1:shard-states", "m3pipe:job:job-1:shard-counts"} <= set(keys)
    store.set_submitted("job-1", shards=3, documents=3, input_records=3, rejected=0)
    assert store.finish_if_complete("job-1") is JobState.COMPLETED_WITH_FAILURES
    assert all(3590 < store.redis.ttl(key) <= 3600 for key in keys)  # every key, not the hash
    status = store.status("job-1")
    assert status.expires_at == pytest.approx(status.finished_at + 3600)

    # `m3pipe retry` puts the job back to work: nothing of it may expire meanwhile.
    assert store.reopen_shard("job-1", 0)
    assert all(store.redis.ttl(key) == -1 for key in keys if store.redis.exists(key))
    assert store.status("job-1").expires_at is None

    # Once its keys are gone, the job leaves the index the next time jobs are listed.
    store.create(make_spec(tmp_path, "job-2"), ttl=60)
    assert store.cancel("job-2") is JobState.CANCELLED and store.redis.ttl(job_key("job-2")) > 0
    store.redis.delete(*store.redis.scan_iter("m3pipe:job:job-2*"))  # what the expiry does
    assert store.job_ids() == ["job-1"] and store.redis.zscore(JOBS_INDEX, "job-2") is None


def test_a_ttl_of_zero_keeps_an_ended_job(store, tmp_path):
    store.create(make_spec(tmp_path), ttl=0)
    store.cancel("job-1")
    assert store.redis.ttl(job_key("job-1")) == -1 and store.status("job-1").expires_at is None


def test_status_and_jobs_say_until_when_an_ended_job_is_kept(store, tmp_path):
    from pipeline.cli.job_view import describe, one_line

    store.create(make_spec(tmp_path), ttl=3600)
    assert "kept until" not in describe(store.status("job-1"))  # running: kept
    store.cancel("job-1")
    status = store.status("job-1")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(status.expires_at))
    assert f"kept until {when}" in describe(status) and f"kept until {when}" in one_line(status)


def test_shard_records_come_in_order_in_batches_each_once_with_its_info(store, tmp_path):
    store.create(make_spec(tmp_path))
    for shard in range(2500):
        store.mark_shard("job-1", shard, Q, [ABSENT], {"documents": shard})
    store.mark_shard("job-1", 7, F, ACTIVE, {"error": "boom"})
    records = list(store.shard_records("job-1", 2500, batch=300))
    assert [shard for shard, _, _ in records] == list(range(2500))  # each once, in order
    assert list(store.shard_records("job-1", 2500, batch=130)) == records  # across buckets
    assert records[7] == (7, F, {"error": "boom"})
    assert records[1234] == (1234, Q, {"documents": 1234})
    # Past five digits numeric order is not name order (part-100000 < part-99999).
    for shard in (100_000, 99_999):
        store.mark_shard("job-1", shard, Q, [ABSENT], {"documents": 1})
    tail = [(s, state) for s, state, _ in store.shard_records("job-1", 100_001) if s > 99_990]
    assert tail == [(s, None) for s in range(99_991, 99_999)] + [(99_999, Q), (100_000, Q)]
    # Whole-job reads and forgetting reach every bucket, however sparse.
    states = store.shard_states("job-1")
    assert len(states) == 2502 and states[7] is F and states[100_000] is Q
    assert store.shard_infos("job-1")[1234] == {"documents": 1234}
    store.forget("job-1")
    assert list(store.redis.scan_iter("m3pipe:job:job-1*")) == []


def test_shards_in_a_state_are_streamed_across_buckets_and_infos_read_for_those_asked(
    store, tmp_path
):
    store.create(make_spec(tmp_path))
    for shard in range(450):
        store.mark_shard("job-1", shard, Q, [ABSENT], {"documents": shard})
    for shard in range(0, 450, 7):
        store.mark_shard("job-1", shard, F, ACTIVE, {"error": "x"})
    queued = store.shards_in_state("job-1", Q)
    assert not isinstance(queued, list | set | dict)  # a stream, not the job at once
    assert sorted(queued) == [shard for shard in range(450) if shard % 7]
    assert sorted(store.shards_in_state("job-1", F)) == list(range(0, 450, 7))
    assert store.infos_of("job-1", [3, 7, 10_000]) == {3: {"documents": 3}, 7: {"error": "x"}}
    assert store.infos_of("job-1", []) == {}


def test_finalisation_writes_a_small_manifest_and_a_shard_log_in_shard_order(store, tmp_path):
    store.create(make_spec(tmp_path))
    for shard in (2, 0, 1, 3):  # ended out of order
        name = part_name(shard)
        store.mark_shard("job-1", shard, Q, [ABSENT], {"documents": 1})
        if shard == 3:
            store.mark_shard("job-1", shard, F, ACTIVE, {"error": "boom"})
            continue
        (tmp_path / name).write_bytes(b"x")
        done = ShardReport(documents=1, rows=1, tokens=5, part_bytes=1)
        store.mark_done("job-1", shard, ACTIVE, done)
    store.set_submitted("job-1", shards=4, documents=4, input_records=4, rejected=0)
    assert finalize_if_complete(store, "job-1") is JobState.COMPLETED_WITH_FAILURES
    log = list(read_shard_log(tmp_path))
    assert [(e["shard"], e["state"]) for e in log] == [
        (0, "done"), (1, "done"), (2, "done"), (3, "failed")
    ]  # fmt: skip
    assert log[0] == {
        "shard": 0, "state": "done", "name": part_name(0), "documents": 1, "rows": 1,
        "tokens": 5, "bytes": 1,
    }  # fmt: skip
    assert log[3]["error"] == "boom"
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert manifest["parts"] == 3 and manifest["shards_file"] == "_shards.jsonl"
    assert manifest["counts"]["failed_shards"] == 1
    assert [f["shard"] for f in manifest["failed_shards"]] == [3]
    assert "files" not in manifest  # per-shard detail lives in the log only


def test_the_manifest_lists_a_bounded_number_of_failures(store, tmp_path):
    from pipeline.storage.manifest import MANIFEST_FAILURES

    store.create(make_spec(tmp_path))
    shards = MANIFEST_FAILURES + 20
    for shard in range(shards):
        store.mark_shard("job-1", shard, Q, [ABSENT], {"documents": 1})
        store.mark_shard("job-1", shard, F, ACTIVE, {"error": f"boom {shard}"})
    store.set_submitted("job-1", shards=shards, documents=shards, input_records=shards, rejected=0)
    assert finalize_if_complete(store, "job-1") is JobState.FAILED
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert len(manifest["failed_shards"]) == MANIFEST_FAILURES
    assert manifest["counts"]["failed_shards"] == shards
    assert sum(1 for entry in read_shard_log(tmp_path) if entry["state"] == "failed") == shards


def test_status_and_wait_say_why_shards_failed(store, tmp_path, redis_server, capsys,
                                               monkeypatch):  # fmt: skip
    """Issue 33, item 1: a job whose shards all failed said only "failed" ("error": null);
    the reasons were in _shards.jsonl. Now the most common reasons, with counts."""
    from pipeline.cli.main import main
    from pipeline.jobs.failures import failure_reasons

    store.create(make_spec(tmp_path))
    reasons = ["asks for embed model 'X'"] * 3 + ["disk full"] * 2 + ["odd"]
    for shard, reason in enumerate(reasons):
        store.mark_shard("job-1", shard, Q, [ABSENT], {"documents": 1})
        store.mark_shard("job-1", shard, F, ACTIVE, {"error": reason})
    store.set_submitted("job-1", shards=len(reasons), documents=6, input_records=6, rejected=0)
    assert [(r.reason, r.shards) for r in failure_reasons(store, "job-1", shown=2)] == [
        ("asks for embed model 'X'", 3), ("disk full", 2)]  # fmt: skip
    finalize_if_complete(store, "job-1")
    monkeypatch.setenv("M3PIPE_BROKER_URL", redis_server.url)
    assert main(["wait", "job-1"]) == 1
    err = capsys.readouterr().err
    assert "failed shards (6), by reason:" in err
    assert "     3 shard(s): asks for embed model 'X'" in err
    assert main(["status", "job-1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["failures"][0] == {"reason": "asks for embed model 'X'", "shards": 3}


def test_follow_hands_each_status_read_to_the_bar_until_the_job_ends(store, tmp_path):
    from pipeline.cli.job_view import StatusBar
    from pipeline.jobs.watch import follow

    store.create(make_spec(tmp_path))
    seen = []
    polls = iter(range(3))

    def check() -> None:  # the third poll ends the job
        if next(polls) == 2:
            store.cancel("job-1")

    bar = StatusBar(enabled=True)
    ended = follow(store, "job-1", poll_seconds=0, check=check,
                   on_status=lambda status: (seen.append(status.state), bar(status)))  # fmt: skip
    bar.close()
    assert ended.state is JobState.CANCELLED
    assert seen[-1] is JobState.CANCELLED and len(seen) == 4  # every status read, once
    still = follow(store, "job-1", poll_seconds=0, timeout=0)
    assert still.state is JobState.CANCELLED


def test_follow_sees_the_end_between_polls_when_asked(store, tmp_path):
    """`m3pipe run` looks at the job's state alone between its status polls: the end is
    seen at once, not at the next poll."""
    import threading
    import time

    from pipeline.jobs.watch import follow

    store.create(make_spec(tmp_path))
    reads: list[JobState] = []
    ender = threading.Timer(0.2, store.cancel, args=("job-1",))
    started = time.monotonic()
    ender.start()
    try:
        ended = follow(store, "job-1", poll_seconds=10, end_check_seconds=0.01,
                       on_status=lambda status: reads.append(status.state))  # fmt: skip
    finally:
        ender.cancel()
    assert ended.state is JobState.CANCELLED
    assert time.monotonic() - started < 5  # not the 10 s poll
    assert reads == [JobState.QUEUED, JobState.CANCELLED]  # read at the start, then at the end


def test_status_and_wait_name_shards_whose_state_redis_lost(store, tmp_path, redis_server,
                                                             capsys, monkeypatch):  # fmt: skip
    """Issue 30, item 2: after Redis lost writes, `wait` waited for ever on shards nobody
    would run. Shards in the total with no state are named, with the one command to run."""
    from pipeline.cli.main import main

    store.create(make_spec(tmp_path))
    for shard in range(5):  # registered and done; shards 5-7's writes were lost
        store.mark_shard("job-1", shard, Q, [ABSENT], {"documents": 1})
        store.mark_done(
            "job-1", shard, ACTIVE, ShardReport(documents=1, rows=1, tokens=3, part_bytes=10)
        )
    store.set_submitted("job-1", shards=8, documents=8, input_records=8, rejected=0)
    assert finalize_if_complete(store, "job-1") is None  # not complete: it cannot end
    status = store.status("job-1")
    assert status.lost_shards == 3 and not status.state.finished
    monkeypatch.setenv("M3PIPE_BROKER_URL", redis_server.url)
    monkeypatch.setenv("M3PIPE_POLL_SECONDS", "0.05")
    assert main(["wait", "job-1", "--timeout", "60"]) == 1  # at once, not after the timeout
    err = capsys.readouterr().err
    assert "3 shard(s) of job job-1 have no state in Redis" in err and "m3pipe repair job-1" in err
    assert main(["status", "job-1"]) == 0
    assert "lost: 3 shard(s)" in capsys.readouterr().out
    assert main(["status", "job-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lost"] == 3
    store.mark_shard("job-1", 5, Q, [ABSENT], {"documents": 1})  # a registration comes back
    assert store.status("job-1").lost_shards == 2


def test_wait_stops_on_queued_shards_with_no_message_anywhere(store, tmp_path, redis_server,
                                                              capsys, monkeypatch):  # fmt: skip
    """Issue 30, item 2: a queued count the messages present do not bear out (a failover
    that kept a shard's registration and lost its message, or lost the record of a delivery
    its worker never ran) held `wait` for ever. After a quiet spell it looks: shards queued
    or running with no message are named, with the command to run; a shard whose message is
    there is not."""
    from pipeline.cli.main import main
    from pipeline.exit_codes import EXIT_TIMEOUT
    from pipeline.jobs.keys import shard_task_id

    store.create(make_spec(tmp_path))
    for shard in range(3):
        store.mark_shard("job-1", shard, Q, [ABSENT], {"documents": 1})
    store.mark_shard("job-1", 0, R, [Q.value], {"documents": 1})  # its delivery record lost
    store.set_submitted("job-1", shards=3, documents=3, input_records=3, rejected=0)
    message = {"body": "e30=", "properties": {"correlation_id": shard_task_id("job-1", 1)}}
    store.redis.lpush("m3pipe", json.dumps(message))  # shard 1's message is waiting
    monkeypatch.setenv("M3PIPE_BROKER_URL", redis_server.url)
    monkeypatch.setenv("M3PIPE_POLL_SECONDS", "0.01")  # a quiet spell of 0.6 s
    started = time.monotonic()
    assert main(["wait", "job-1", "--timeout", "60"]) == 1
    assert time.monotonic() - started < 20  # not the timeout
    err = capsys.readouterr().err
    assert "2 shard(s) of job job-1 are queued or running with no message anywhere (0, 2)" in err
    assert "`m3pipe repair job-1` sends them again" in err
    assert main(["status", "job-1"]) == 0
    assert "orphaned: 2 shard(s)" in capsys.readouterr().out
    # With every message there, `wait` keeps waiting (here: until its timeout).
    for shard in (0, 2):
        message["properties"]["correlation_id"] = shard_task_id("job-1", shard)
        store.redis.lpush("m3pipe", json.dumps(message))
    assert main(["wait", "job-1", "--timeout", "1"]) == EXIT_TIMEOUT
    assert "still running" in capsys.readouterr().err
