"""A shard whose state Redis lost (a failover that dropped the last writes, an eviction):
the worker says so and goes on, never a ValueError for the state '-' (issue 30, item 5)."""

from __future__ import annotations

import pytest

from pipeline.jobs.keys import job_key, shard_states_key
from pipeline.runtime.shard_runner import run_shard
from tests.pipeline.runtime.queue_job import runtime_of, submitted


@pytest.fixture
def runtime(store, tiny):
    return runtime_of(store, tiny)


def test_a_registered_shard_whose_state_is_gone_is_skipped_saying_so(tmp_path, store, runtime):
    job_id, sent = submitted(tmp_path, store, documents=20)
    store.redis.delete(shard_states_key(job_id))  # every shard's state lost
    outcome = run_shard(sent[0], runtime)
    assert outcome.state is None and outcome.detail == "state lost"
    assert store.attempts(job_id, 0) == 0  # nothing ran
    assert not (tmp_path / "out" / "part-00000.parquet").exists()


def test_a_stale_attempt_whose_state_is_gone_ends_without_a_value_error(
    tmp_path, store, runtime, monkeypatch
):
    """The commit fence fails (another delivery took the shard, or Redis lost it) and the
    state read back afterwards is gone: the attempt ends as stale, nothing written."""
    _, sent = submitted(tmp_path, store, documents=20)

    def lost(job: str, shard: int, token: str) -> bool:
        store.redis.delete(shard_states_key(job))
        return False

    monkeypatch.setattr(store, "owns", lost)
    outcome = run_shard(sent[0], runtime)
    assert outcome.state is None and outcome.detail == "stale attempt"
    assert not (tmp_path / "out" / "part-00000.parquet").exists()


def lose_shard(redis_server, job_id: str, shard: int, documents: int = 10) -> None:
    """Redis forgets one queued shard, as a failover that dropped the last writes does (or
    an eviction): its state, its registration and its place in the job's counts."""
    raw = redis_server.client()
    raw.setrange(shard_states_key(job_id), shard, b"\0")
    raw.hdel(f"m3pipe:job:{job_id}:shard-digest", str(shard))
    raw.hincrby(job_key(job_id), "n_queued", -1)
    raw.hincrby(job_key(job_id), "documents_enqueued", -documents)


def test_a_message_whose_registration_was_lost_is_registered_again_from_the_plan(
    tmp_path, store, runtime, redis_server
):
    """Issue 30, item 2: the worker takes the message up again instead of dropping it as
    never registered, because the job's shard plan holds exactly this message."""
    import pyarrow.dataset as ds

    from schemas.job import JobState, ShardState

    job_id, sent = submitted(tmp_path, store, documents=30)
    lose_shard(redis_server, job_id, 1)
    assert store.status(job_id).shards.queued == 2  # what Redis believes now: one lost
    outcomes = [run_shard(message, runtime) for message in sent]
    assert [o.state for o in outcomes] == [ShardState.DONE] * 3
    assert store.state(job_id) is JobState.COMPLETED
    ids = ds.dataset(tmp_path / "out", format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == sorted(f"d{i}" for i in range(30))
    assert store.status(job_id).documents_done == 30


def test_a_lost_shard_whose_part_is_written_is_marked_done_from_it_not_run_again(
    tmp_path, store, runtime, redis_server
):
    from schemas.job import ShardState

    raw = redis_server.client()
    job_id, sent = submitted(tmp_path, store, documents=30)
    replica = {key: raw.dump(key) for key in raw.scan_iter(f"m3pipe:job:{job_id}*")}
    assert run_shard(sent[0], runtime).state is ShardState.DONE
    for key, value in replica.items():  # promoted: a replica that had not seen it end ...
        raw.restore(key, 0, value, replace=True)
    lose_shard(redis_server, job_id, 0)  # ... nor its registration
    outcome = run_shard(sent[0], runtime)  # delivered again (its ack was lost too)
    assert outcome.state is ShardState.DONE and outcome.detail.startswith("found written")
    assert store.attempts(job_id, 0) == 1  # not run a second time
    assert store.shard_state(job_id, 0) == ShardState.DONE.value
    assert store.status(job_id).documents_done == 10  # counted once, from the footer


def test_a_lost_shard_is_not_taken_up_from_a_message_the_plan_does_not_hold(
    tmp_path, store, runtime, redis_server
):
    """Another message for the shard (altered, forged) or one that carries its documents
    (not in the plan): dropped as never registered, nothing recorded."""
    from pipeline.errors import UnregisteredShard

    job_id, sent = submitted(tmp_path, store, documents=30)
    lose_shard(redis_server, job_id, 1)
    ref = sent[1].ref
    assert ref is not None
    altered = sent[1].model_copy(update={"ref": ref.model_copy(update={"digest": "0" * 64})})
    with pytest.raises(UnregisteredShard):
        run_shard(altered, runtime)
    assert store.shard_state(job_id, 1) == "-"
    (tmp_path / "b").mkdir()
    inline_job, inline_sent = submitted(tmp_path / "b", store, documents=20, inline_shards=True)
    lose_shard(redis_server, inline_job, 0)
    with pytest.raises(UnregisteredShard):
        run_shard(inline_sent[0], runtime)
