"""A forged or altered copy of a registered shard message costs nothing (issue 28, item 5):
refused before the shard's state, attempts or letters change, and the real one still runs."""

from __future__ import annotations

import pytest

from pipeline.errors import ForgedMessage
from pipeline.runtime.shard_runner import run_shard
from schemas.job import ShardState
from tests.pipeline.runtime.queue_job import runtime_of, submitted


@pytest.fixture
def runtime(store, tiny):
    return runtime_of(store, tiny)


def by_reference_job(tmp_path, store):
    return submitted(tmp_path, store, documents=40)


def forged_copy(message, **segment_changes):
    data = message.model_dump(mode="json")
    data["ref"]["segments"][0].update(segment_changes)
    return type(message).model_validate(data)


@pytest.mark.parametrize("changes", [{"input": 7}, {"start": 0}], ids=["input", "range"])
def test_a_forged_copy_is_refused_and_the_real_shard_runs(tmp_path, store, runtime, changes):
    job_id, sent = by_reference_job(tmp_path, store)
    real = sent[3]
    assert real.ref is not None
    forged = forged_copy(real, **changes)
    assert forged.ref.digest == real.ref.digest  # it keeps the documents' digest
    with pytest.raises(ForgedMessage, match="not the message registered"):
        run_shard(forged, runtime)
    assert store.shard_state(job_id, 3) == ShardState.QUEUED.value  # untouched
    assert store.attempts(job_id, 3) == 0
    assert store.dead_letters(job_id) == {}
    outcome = run_shard(real, runtime)
    assert outcome.state is ShardState.DONE and outcome.rows == 10


def test_retry_resends_only_the_registered_message(
    tmp_path, store, runtime, redis_server, monkeypatch, capsys
):
    """A dead letter that is not the registered message (kept by an older worker, or
    forged into Redis) is not re-sent by `m3pipe retry`; a real one is."""
    from pipeline.cli.main import main
    from pipeline.runtime.shard_runner import fail_shard

    job_id, sent = by_reference_job(tmp_path, store)
    fail_shard(runtime, forged_copy(sent[2], input=7), "the job has 1", "t@host")
    fail_shard(runtime, sent[1], "a real failure", "t@host")
    published: list = []
    monkeypatch.setenv("M3PIPE_BROKER_URL", redis_server.url)
    monkeypatch.setattr(
        "workers.app.shard_publisher", lambda settings: lambda m, q, p: published.append(m)
    )
    main(["retry", job_id])
    assert published == [sent[1]]
    assert "shard 2: its letter is not the message registered" in capsys.readouterr().err
