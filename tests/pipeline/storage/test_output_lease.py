"""One run or job writes into an output directory at a time (issue 28, item 2)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time

import pyarrow.parquet as pq
import pytest

from pipeline.cli.main import main
from pipeline.engine.embedder import EmbedEngine
from pipeline.errors import OutputDirError
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK
from pipeline.local.process import process_file
from pipeline.storage.location import open_location
from pipeline.storage.output_dir import MANIFEST
from pipeline.storage.output_lease import (
    LEASE,
    STALE_SECONDS,
    _process_start,
    holder_alive,
    read_lease,
    take_lease,
)
from pipeline.tasks import task_kind
from schemas.job import JobState, Task
from schemas.options import EncodeOptions
from tests.pipeline.cli.test_cli_encode import _args, _write_jsonl
from tests.pipeline.runtime.queue_job import runtime_of, submitted


def records(count: int, tag: str) -> list[dict[str, str]]:
    return [{"id": f"{tag}{i}", "text": f"{tag} document number {i}"} for i in range(count)]


def test_a_second_encode_into_a_directory_in_use_is_refused_before_the_model_loads(
    tmp_path, capsys, monkeypatch
):
    out = open_location(tmp_path / "out")
    out.make_dir()
    inp = _write_jsonl(tmp_path / "in.jsonl", records(3, "b"))
    loaded = []
    monkeypatch.setattr("pipeline.tasks.kind.TaskKind.load_model", lambda *a, **k: loaded.append(1))
    with take_lease(out, command="encode"):  # the first run, still going
        for extra in ((), ("--overwrite",)):
            assert main(_args(inp, out.local_path, *extra)) == EXIT_FAILED
            err = capsys.readouterr().err
            assert "is in use by `m3pipe encode` (pid" in err, err
    assert loaded == []  # refused before any heavy work
    assert not any(name.startswith("part-") for name in os.listdir(out.local_path))


def test_an_existing_output_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    inp = _write_jsonl(tmp_path / "in.jsonl", records(2, "a"))
    assert main(_args(inp, tmp_path / "out")) == EXIT_OK
    monkeypatch.setattr(
        "pipeline.tasks.kind.TaskKind.load_model",
        lambda *a, **k: pytest.fail("the model was loaded before the refusal"),
    )
    assert main(_args(inp, tmp_path / "out")) == EXIT_FAILED
    assert "already holds output" in capsys.readouterr().err
    assert read_lease(open_location(tmp_path / "out")) is None  # released at the end


def _dead_pid() -> int:
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    process.start()
    process.join()
    return int(process.pid or 0)


def test_a_crashed_runs_lease_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    crashed = {
        "token": "old",
        "command": "encode",
        "job_id": None,
        "host": socket.gethostname(),
        "pid": _dead_pid(),
        "pid_start": "1",
        "taken": time.time(),
        "renewed": time.time(),
    }
    (out / LEASE).write_text(json.dumps(crashed))
    inp = _write_jsonl(tmp_path / "in.jsonl", records(3, "c"))
    assert main(_args(inp, out)) == EXIT_OK
    assert pq.read_table(sorted(out.glob("part-*.parquet"))).num_rows == 3


def test_liveness_of_holders():
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
    }
    assert holder_alive(me)
    assert not holder_alive({**me, "pid_start": "0"})  # the pid was reused
    elsewhere = {"host": "another-host", "pid": 1, "renewed": time.time()}
    assert holder_alive(elsewhere)
    assert not holder_alive({**elsewhere, "renewed": time.time() - STALE_SECONDS - 1})
    assert not holder_alive({"host": "another-host", "renewed": "garbage"})
    job = {"job_id": "j1"}
    assert holder_alive(job, lambda job_id: True)
    assert not holder_alive(job, lambda job_id: False)
    # Unknown to Redis: live only while young (registered just after the lease is taken).
    assert holder_alive({**job, "taken": time.time()}, lambda job_id: None)
    assert not holder_alive({**job, "taken": time.time() - 31}, lambda job_id: None)


def test_a_garbage_lease_file_is_stale(tmp_path):
    out = open_location(tmp_path)
    (tmp_path / LEASE).write_text("not json")
    with take_lease(out, command="encode") as lease:
        assert read_lease(out)["token"] == lease.token


def test_a_run_whose_lease_was_taken_over_writes_nothing_more(tmp_path, tiny):
    """Another taker replaced the lease mid-run: the run stops before its next part or its
    manifest becomes visible, and says who took it."""
    inp = _write_jsonl(tmp_path / "in.jsonl", records(40, "d"))
    out = tmp_path / "out"
    seen = []

    def progress(documents: int, tokens: int) -> None:
        seen.append(documents)
        if len(seen) == 1:  # after the first shard: someone else takes the directory
            forged = {"token": "other", "job_id": "job-x", "renewed": time.time()}
            (out / LEASE).write_text(json.dumps(forged))

    engine = EmbedEngine(tiny, EncodeOptions(max_length=64))
    with pytest.raises(OutputDirError, match="taken over by job job-x"):
        process_file(task_kind(Task.EMBED), inp, out, engine, shard_items=4, progress=progress)
    assert not (out / MANIFEST).exists()
    assert len(list(out.glob("part-*.parquet"))) <= 2  # the one before, at most one in flight
    assert json.loads((out / LEASE).read_text())["token"] == "other"  # not released by us


def test_reuse_through_a_link_to_the_output_is_refused(tmp_path, capsys):
    inp = _write_jsonl(tmp_path / "in.jsonl", records(4, "e"))
    assert main(_args(inp, tmp_path / "prev")) == EXIT_OK
    (tmp_path / "alias").symlink_to(tmp_path / "prev")
    code = main(_args(inp, tmp_path / "alias", "--reuse", str(tmp_path / "prev"), "--overwrite"))
    assert code == EXIT_FAILED
    assert "--reuse needs another output directory" in capsys.readouterr().err
    assert len(list((tmp_path / "prev").glob("part-*.parquet"))) == 1  # not deleted


# The queue path: a job owns its --out from submit until it ends.


@pytest.fixture
def runtime(store, tiny):
    return runtime_of(store, tiny)


def submit(tmp_path, store, tag: str, **changes):
    return submitted(tmp_path, store, documents=20, tag=tag, **changes)


def test_a_second_submit_to_the_out_of_a_running_job_is_refused(tmp_path, store):
    first, _ = submit(tmp_path, store, "a")
    with pytest.raises(OutputDirError, match="already holds output"):
        submit(tmp_path, store, "b")
    with pytest.raises(OutputDirError, match=f"in use by job {first}"):
        submit(tmp_path, store, "b", overwrite=True)
    assert (tmp_path / "out" / "_job.json").exists()  # the first job's files are untouched
    store.end(first, JobState.CANCELLED, "cancelled")
    second, _ = submit(tmp_path, store, "b", overwrite=True)  # an ended job's lease is free
    assert read_lease(open_location(tmp_path / "out"))["job_id"] == second


def test_a_young_job_lease_is_live_before_redis_knows_the_job(tmp_path, store):
    out = open_location(tmp_path)
    take_lease(out, command="submit", job_id="not-yet-registered", job_alive=store.is_active)
    with pytest.raises(OutputDirError, match="in use by job not-yet-registered"):
        take_lease(out, command="encode", job_alive=store.is_active)


def test_a_job_writes_nothing_into_a_directory_taken_from_it(tmp_path, store, runtime):
    from pipeline.jobs.finish import finalize_if_complete
    from pipeline.runtime.shard_runner import run_shard

    job_id, sent = submit(tmp_path, store, "a")
    out = tmp_path / "out"
    run_shard(sent[0], runtime)
    assert (out / "part-00000.parquet").exists()
    # Another run took the directory (its job expired from Redis, say): the next part fails.
    taken = {"token": "x", "job_id": None, "command": "encode", "host": "h", "pid": 1}
    (out / LEASE).write_text(json.dumps({**taken, "taken": time.time()}))
    with pytest.raises(OutputDirError, match="taken over by `m3pipe encode`"):
        run_shard(sent[1], runtime)
    assert not (out / "part-00001.parquet").exists()
    from pipeline.runtime.shard_runner import fail_shard

    fail_shard(runtime, sent[1], "taken over", "t@host")
    assert finalize_if_complete(store, job_id) is not None
    assert not (out / MANIFEST).exists()  # no manifest written over another run's directory
    assert "taken over" in (store.status(job_id).error or "")


def test_check_job_owns_reads_the_lease_or_an_older_jobs_file(tmp_path):
    from pipeline.storage.output_dir import check_job_owns

    out = open_location(tmp_path)
    (tmp_path / "_job.json").write_text(json.dumps({"job_id": "old"}))
    check_job_owns(out, "old")  # a job submitted before leases existed
    with pytest.raises(OutputDirError, match="no longer job other's"):
        check_job_owns(out, "other")
    (tmp_path / LEASE).write_text(json.dumps({"token": "t", "job_id": "new"}))
    check_job_owns(out, "new")
    with pytest.raises(OutputDirError, match="taken over by job new"):
        check_job_owns(out, "old")


def test_a_finished_job_leaves_its_directory_free(tmp_path, store, runtime):
    from pipeline.runtime.shard_runner import run_shard

    job_id, sent = submit(tmp_path, store, "a")
    assert read_lease(open_location(tmp_path / "out"))["job_id"] == job_id
    for message in sent:
        run_shard(message, runtime)
    assert (tmp_path / "out" / MANIFEST).exists()
    assert not (tmp_path / "out" / LEASE).exists()  # a finished output has no owner
