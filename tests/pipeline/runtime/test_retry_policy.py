"""The retry policy in-process, with a real Redis: backoff, then dead-lettered at the limit;
and the commit fence: a write that loses ownership never becomes visible."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline.runtime.retry_policy import after_failure, retry_countdown
from pipeline.runtime.worker_runtime import WorkerRuntime
from pipeline.storage.sink import write_shard
from producers.submit import ShardLimits, SubmitRequest, submit_job
from schemas.job import ShardState
from schemas.options import EncodeOptions


def test_backoff_grows_fourfold_up_to_ten_minutes():
    assert [retry_countdown(a, 5.0) for a in (1, 2, 3, 4, 5)] == [5, 20, 80, 320, 600]
    assert retry_countdown(0, 5.0) == 5


def test_failures_retry_with_backoff_then_dead_letter_at_max_attempts(tmp_path, store):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"d{i}", "text": "x"}) + "\n" for i in range(3)))
    request = SubmitRequest(
        inputs=[inp], out=tmp_path / "out", model="random:tiny", options=EncodeOptions(),
        queue="q", limits=ShardLimits(items=10, bytes=1 << 20, tokens=100_000), max_queued=10,
    )  # fmt: skip
    sent = []
    job_id = submit_job(request, store, lambda m, *_: sent.append(m)).job_id
    [message] = sent
    runtime = WorkerRuntime(models=None, store=store, hostname="w@h", max_attempts=4,  # type: ignore[arg-type]
                            retry_backoff_seconds=2.0)  # fmt: skip
    countdowns = []
    for _ in range(4):  # each delivery starts as run_shard starts it
        store.mark_shard(job_id, 0, ShardState.RUNNING, ["queued", "running"])
        store.count_attempt(job_id, 0)
        countdowns.append(after_failure(runtime, message, OSError("disk hiccup"), "w@h"))
        if countdowns[-1] is not None:
            assert store.shard_state(job_id, 0) == "queued"
            assert store.retry_letter(job_id, 0) == message.model_dump_json()
    assert countdowns == [2.0, 8.0, 32.0, None]
    assert store.shard_state(job_id, 0) == "failed"
    assert (
        "dead-lettered after 4 attempts: OSError('disk hiccup')"
        in (store.shard_infos(job_id)[0]["error"])
    )
    assert list(store.dead_letters(job_id)) == [0]
    assert store.retry_letter(job_id, 0) is None


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_fenced_write_never_appears(tmp_path, where):
    target = str(tmp_path / "part-00000.parquet") if where == "local" else "memory://b/p.parquet"

    def stale() -> None:
        raise RuntimeError("another delivery owns this shard")

    with pytest.raises(RuntimeError, match="owns"):
        write_shard(pa.table({"id": ["a"]}), target, fence=stale)
    if where == "local":
        assert list(tmp_path.iterdir()) == []  # neither the file nor its temp file
    else:
        import fsspec

        assert not fsspec.filesystem("memory").exists("/b/p.parquet")


def test_each_failure_maps_to_one_verdict_recorded_once(tmp_path, store, monkeypatch):
    """decide() is the one place an exception becomes a verdict: an unknown job's message
    is dropped, another worker's shard given back with no attempt counted, a permanent error
    fails the shard at once, a transient one retries, and Redis out of reach hands the
    message back."""
    import redis

    from pipeline.errors import InputError, RetryableError, UnknownJob, WrongWorker
    from pipeline.runtime.retry_policy import Action, decide
    from tests.pipeline.runtime.queue_job import submitted

    job_id, sent = submitted(tmp_path, store, documents=20)
    runtime = WorkerRuntime(models=None, store=store, hostname="w@h",  # type: ignore[arg-type]
                            retry_backoff_seconds=3.0)  # fmt: skip
    ended: list[str] = []
    monkeypatch.setattr(runtime.metrics, "shard_ended", lambda how, tenant: ended.append(how))

    def verdict(exc: Exception, shard: int = 0):
        return decide(runtime, sent[shard], exc, "w@h", "default")

    assert verdict(UnknownJob("no such job")).action is Action.DROP
    given = verdict(WrongWorker("wants model X"))
    assert (given.action, given.countdown) == (Action.GIVE_BACK, 3.0)
    assert store.attempts(job_id, 0) == 0 and store.shard_state(job_id, 0) == "queued"
    assert "wants model X; last given back by w@h" in store.status(job_id).waiting
    store.mark_shard(job_id, 0, ShardState.RUNNING, ["queued"])
    store.count_attempt(job_id, 0)
    retried = verdict(RetryableError("device busy"))
    assert (retried.action, retried.countdown) == (Action.RETRY, 3.0)
    store.mark_shard(job_id, 1, ShardState.RUNNING, ["queued"])
    assert verdict(InputError("unreadable"), shard=1).action is Action.FAIL
    assert store.shard_state(job_id, 1) == "failed" and list(store.dead_letters(job_id)) == [1]
    assert ended == ["given_back", "retried", "failed"]

    def unreachable(*args, **kwargs):
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(store, "attempts", unreachable)
    handed = verdict(OSError("disk hiccup"))
    assert handed.action is Action.HAND_BACK and "job state unreachable" in handed.reason
