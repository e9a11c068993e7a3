"""A shard whose state Redis lost (a failover that dropped the last writes, an eviction):
the worker says so and goes on, never a ValueError for the state '-' (issue 30, item 5)."""

from __future__ import annotations

import pytest

from pipeline.jobs.keys import shard_states_key
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
