"""Hostile input at the Redis boundary, with real workers (issue 14, items 8-13): any
attempt count, garbage and oversized queue entries, unregistered shards, forged output
locations, and a stale attempt that must not write after the job completed."""

from __future__ import annotations

import json
import os
import signal
import time

import pyarrow.dataset as ds
import pytest

from pipeline.broker.backlog import UNACKED_KEY, backlog, priority_lists
from pipeline.jobs.keys import DEFAULT_QUEUE, TASK_ENCODE_SHARD
from pipeline.jobs.resume import documents_digest
from pipeline.settings import Settings
from schemas.document import Document
from schemas.job import JobSpec, ShardMessage, ShardState
from schemas.options import EncodeOptions
from tests.integration.conftest import corpus_records, run_cli, slow_stub, submit, wait_until
from workers.app import create_app


def ids_in(out) -> list[str]:
    return sorted(ds.dataset(out, format="parquet").to_table().column("id").to_pylist())


def test_every_attempt_count_works(tmp_path, cli_env, workers, store):
    """M3PIPE_MAX_ATTEMPTS=6: Celery's own limit of 3 retries used to drop the message at
    the fourth, leaving the shard `queued` with no message and `wait` hanging."""
    cli_env.update(M3PIPE_MAX_ATTEMPTS="6", M3PIPE_RETRY_BACKOFF_SECONDS="0.01")
    job_id = submit(tmp_path, cli_env, corpus_records(20), "--shard-docs", "10")
    blocker = tmp_path / "out" / "part-00001.parquet"
    blocker.mkdir()  # every attempt at shard 1 fails at its commit
    workers.start(1)
    waited = run_cli("wait", job_id, "--timeout", "240", env=cli_env, timeout=260)
    assert waited.returncode == 1, waited.stderr  # ended, with a failed shard: no hang
    assert store.attempts(job_id, 1) == 6
    assert "dead-lettered after 6 attempts" in store.shard_infos(job_id)[1]["error"]


@pytest.mark.parametrize("shards", ["by-reference", "inline"])
def test_a_lost_retry_is_found_by_status_and_resent_by_retry(
    tmp_path, cli_env, workers, store, shards
):
    """A shard waiting for its retry whose message is lost with its worker: `status` names
    the orphan, `retry` re-sends the message kept for it (read back from the output
    directory when the shard carries its documents), the job completes."""
    cli_env.update(M3PIPE_RETRY_BACKOFF_SECONDS="60")  # the retry waits in the worker
    records = corpus_records(20)
    for record in records[10:]:  # shard 1 carries over 4 KB of text: its letter is spilled
        record["text"] *= 4
    inline = ["--inline-shards"] if shards == "inline" else []
    job_id = submit(tmp_path, cli_env, records, "--shard-docs", "10", *inline)
    blocker = tmp_path / "out" / "part-00001.parquet"
    blocker.mkdir()
    [name] = workers.start(1)
    wait_until(lambda: store.retry_letter(job_id, 1) is not None, timeout=120)
    if inline:
        assert "spilled" in json.loads(store.retry_letter(job_id, 1) or "{}")
    wait_until(lambda: store.shard_state(job_id, 0) == "done", timeout=120)
    wait_until(lambda: "retry in" in workers.log(name), timeout=30)
    os.killpg(workers.processes[name].pid, signal.SIGKILL)
    workers.processes[name].wait()
    # The broker loses the message too (e.g. a failover to a replica that had not got it).
    store.redis.delete(UNACKED_KEY, "unacked_index", *priority_lists(DEFAULT_QUEUE))
    status = json.loads(run_cli("status", job_id, "--json", env=cli_env).stdout)
    assert status["shards"]["queued"] == 1 and status["orphaned"] == [1]
    assert "orphaned: 1 shard(s)" in run_cli("status", job_id, env=cli_env).stdout
    blocker.rmdir()
    retried = run_cli("retry", job_id, env=cli_env)
    assert retried.returncode == 0 and "1 shard(s) re-enqueued" in retried.stderr
    workers.start(1)
    assert run_cli("wait", job_id, "--timeout", "240", env=cli_env, timeout=260).returncode == 0
    assert ids_in(tmp_path / "out") == [r["id"] for r in records]
    assert store.retry_letter(job_id, 1) is None  # dropped once the shard was done


def test_garbage_oversized_and_unregistered_messages_are_dropped_once(
    tmp_path, cli_env, workers, store, redis_server
):
    cli_env.update(M3PIPE_MAX_MESSAGE_BYTES=str(1024 * 1024))
    job_id = submit(tmp_path, cli_env, corpus_records(5))
    [name] = workers.start(1)
    wait_until(lambda: store.status(job_id).state.finished)
    queue = priority_lists(DEFAULT_QUEUE)[1]  # the normal step, where shards go
    store.redis.lpush(queue, b"garbage")
    store.redis.lpush(queue, b'{"not": "a kombu message"}')
    store.redis.lpush(queue, b"[" * 100_000)
    big = b'{"body": "' + b"A" * (2 * 1024 * 1024) + b'", "properties": {"correlation_id": "x-1"}}'
    store.redis.lpush(queue, big)
    # A well-formed message for a shard the job never registered.
    app = create_app(Settings(broker_url=redis_server.url))
    forged = ShardMessage(job_id=job_id, shard=99, documents=[Document(id="f", text="forged")])
    app.send_task(TASK_ENCODE_SHARD, args=[forged.wire()], queue=DEFAULT_QUEUE, priority=3)

    second = submit(tmp_path, cli_env, corpus_records(5), out="out2")
    assert run_cli("wait", second, "--timeout", "240", env=cli_env, timeout=260).returncode == 0
    wait_until(lambda: "never registered shard 99" in workers.log(name), timeout=30)
    log = workers.log(name)
    assert workers.processes[name].poll() is None  # the worker is still up
    assert log.count("dropped a queue entry that is not JSON") == 2
    assert log.count("dropped a queue entry that is not a kombu message") == 1
    assert "dropped a queue entry larger than M3PIPE_MAX_MESSAGE_BYTES" in log
    assert "task id x-1" in log
    refusals = [line for line in log.splitlines() if "refused shard message" in line]
    assert len(refusals) == 1 and "never registered shard 99" in refusals[0]  # once, no retry
    assert store.shard_state(job_id, 99) == "-"
    assert backlog(store.redis, DEFAULT_QUEUE).total == 0


def test_workers_write_only_under_their_output_roots(tmp_path, cli_env, workers, store):
    allowed = tmp_path / "data"
    allowed.mkdir()
    cli_env.update(M3PIPE_OUTPUT_ROOTS=str(allowed))
    [name] = workers.start(1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (allowed / "escape").symlink_to(victim, target_is_directory=True)
    app = create_app(Settings(broker_url=cli_env["M3PIPE_BROKER_URL"]))
    reasons = {}
    for index, out in enumerate([str(elsewhere), "relative/dir", str(allowed / "escape")]):
        # A job record as anyone with Redis access could write it.
        spec = JobSpec(
            job_id=f"forged-{index}",
            inputs=["/dev/null"],
            out=out,
            model="random:tiny",
            options=EncodeOptions(),
            queue=DEFAULT_QUEUE,
            shard_docs=10,
            shard_bytes=1 << 20,
            shard_tokens=1 << 20,
            max_queued=4,
            created_at=time.time(),
        )
        store.create(spec)
        message = ShardMessage(job_id=spec.job_id, shard=0, documents=[Document(id="a", text="x")])
        # registered, as submit would register it
        store.set_shard_digest(spec.job_id, 0, documents_digest(message.items))
        store.mark_shard(spec.job_id, 0, ShardState.QUEUED, ["-"], {"documents": 1})
        app.send_task(TASK_ENCODE_SHARD, args=[message.wire()], queue=DEFAULT_QUEUE, priority=3)
        wait_until(lambda spec=spec: store.shard_state(spec.job_id, 0) == "failed", timeout=60)
        reasons[out] = store.shard_infos(spec.job_id)[0]["error"]
    assert "outside the allowed roots" in reasons[str(elsewhere)]
    assert "is a relative path" in reasons["relative/dir"]
    assert "outside the allowed roots" in reasons[str(allowed / "escape")]
    assert list(elsewhere.iterdir()) == [] and list(victim.iterdir()) == []
    assert not (tmp_path / "relative").exists() and workers.processes[name].poll() is None
    # and a job under the root goes through
    good = submit(tmp_path, cli_env, corpus_records(3), out="data/good")
    assert run_cli("wait", good, "--timeout", "240", env=cli_env, timeout=260).returncode == 0


def test_a_stale_attempt_never_rewrites_a_committed_file(
    tmp_path, cli_env, stub_built, workers, store
):
    """Worker A is stopped mid-shard past the visibility timeout; the shard is redelivered
    (within the restore interval, not kombu's ~100 s), B finishes the job, A resumes: its
    write is fenced off and the job's files do not change after completion."""
    from pipeline.engine.synthetic_text import TextGenerator

    cli_env.update(
        M3PIPE_VISIBILITY_TIMEOUT="6",
        M3PIPE_RESTORE_INTERVAL="1",
        M3PIPE_PLANNED_TOKENS_PER_SECOND="20000",
    )
    slow_stub(cli_env, stub_built, 5000)  # the shard (~8,000 tokens) lasts ~2 s
    gen = TextGenerator(5)
    records = [{"id": f"doc-{i}", "text": gen.document(300)} for i in range(6)]
    job_id = submit(tmp_path, cli_env, records, "--shard-docs", "6")
    [a] = workers.start(1)
    wait_until(lambda: store.shard_state(job_id, 0) == "running", timeout=120, step=0.01)
    os.killpg(workers.processes[a].pid, signal.SIGSTOP)  # main process and pool
    stopped_at = time.monotonic()
    try:
        workers.start(1)
        assert run_cli("wait", job_id, "--timeout", "240", env=cli_env, timeout=260).returncode == 0
        redelivered_after = time.monotonic() - stopped_at
        part = tmp_path / "out" / "part-00000.parquet"
        before = part.stat()
        manifest = (tmp_path / "out" / "_manifest.json").read_bytes()
    finally:
        os.killpg(workers.processes[a].pid, signal.SIGCONT)
    wait_until(lambda: "took this shard over" in workers.log(a), timeout=120)
    after = part.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (tmp_path / "out" / "_manifest.json").read_bytes() == manifest
    assert sorted(ids_in(tmp_path / "out")) == sorted(r["id"] for r in records)
    assert store.attempts(job_id, 0) == 2
    assert redelivered_after < 60  # kombu's default sweep took ~100 s after the timeout


def test_a_worker_of_another_model_leaves_the_shards_for_one_that_serves_it(
    tmp_path, cli_env, workers, store, model_cache
):
    """Issue 28, item 4: a worker serving another model once dead-lettered 18 of 20 shards.
    Now it hands each back (no attempt counted), `status` says what the job waits for, and
    the job completes, every id once, when a worker of the job's model comes."""
    import shutil

    from pipeline.engine.random_model import cached_random_model

    cli_env.update(M3PIPE_RETRY_BACKOFF_SECONDS="0.3")  # the pause before a hand-back
    other = tmp_path / "other-model"  # the same weights under another name: another model
    shutil.copytree(cached_random_model("tiny", model_cache), other)
    workers.start(1, env={**cli_env, "M3PIPE_MODEL": str(other)})
    records = corpus_records(40)
    job_id = submit(tmp_path, cli_env, records, "--shard-docs", "10")
    status = wait_until(lambda: (s := store.status(job_id)).waiting and s, timeout=120)
    assert "waits for a worker serving embed model 'random:tiny'" in status.waiting
    assert status.shards.failed == 0 and status.shards.done == 0
    shown = run_cli("status", job_id, env=cli_env).stdout
    assert "  waiting    job" in shown
    assert "unserved: no live worker serves embed model 'random:tiny' (cpu0-" in shown
    workers.start(1)
    waited = run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320)
    assert waited.returncode == 0, waited.stderr
    status = store.status(job_id)
    assert (status.shards.done, status.shards.failed) == (4, 0)
    assert store.dead_letters(job_id) == {}
    assert ids_in(tmp_path / "out") == sorted(r["id"] for r in records)
