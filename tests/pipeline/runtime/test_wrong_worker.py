"""A worker that cannot serve a shard leaves it for one that can (issue 28, items 3 and 4):
another model, other weights or another compute precision than the job's is not the
shard's failure. Nothing about the shard changes; `status` says what the job waits for."""

from __future__ import annotations

import json

import pytest

from pipeline.cli.job_view import describe
from pipeline.engine.model import load_model
from pipeline.errors import WrongWorker
from pipeline.jobs.finish import finalize_if_complete
from pipeline.runtime.shard_runner import run_shard
from schemas.job import JobState, ShardState
from tests.pipeline.runtime.queue_job import runtime_of, submitted


@pytest.fixture(scope="module")
def tiny_bf16(model_cache):
    return load_model("random:tiny", device="cpu", precision="bf16", cache_dir=model_cache)


def job(tmp_path, store, **changes):
    return submitted(tmp_path, store, **changes)


def assert_untouched(store, job_id: str, shard: int) -> None:
    assert store.shard_state(job_id, shard) == ShardState.QUEUED.value
    assert store.attempts(job_id, shard) == 0
    assert store.dead_letters(job_id) == {}


def test_a_worker_of_another_model_leaves_the_shard_untouched(tmp_path, store, tiny):
    job_id, sent = job(tmp_path, store)
    wrong = runtime_of(store, tiny, spec="random:small")
    with pytest.raises(WrongWorker, match="waits for a worker serving embed model 'random:tiny'"):
        run_shard(sent[0], wrong)
    assert_untouched(store, job_id, 0)
    assert run_shard(sent[0], runtime_of(store, tiny)).state is ShardState.DONE


def test_the_first_worker_binds_the_precision_of_the_job(tmp_path, store, tiny, tiny_bf16):
    job_id, sent = job(tmp_path, store)
    fp32, bf16 = runtime_of(store, tiny), runtime_of(store, tiny_bf16)
    run_shard(sent[0], fp32)
    with pytest.raises(WrongWorker, match="compute_dtype 'float32'"):
        run_shard(sent[1], bf16)
    assert_untouched(store, job_id, 1)
    for message in sent[1:]:
        run_shard(message, fp32)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["model"]["compute_dtype"] == "float32"


def test_a_precision_fixed_at_submit_is_kept(tmp_path, store, tiny, tiny_bf16):
    job_id, sent = job(tmp_path, store, precision="bf16")
    with pytest.raises(WrongWorker, match="computing in bf16"):
        run_shard(sent[0], runtime_of(store, tiny))
    assert_untouched(store, job_id, 0)
    assert run_shard(sent[0], runtime_of(store, tiny_bf16)).state is ShardState.DONE


def test_a_job_of_any_precision_records_the_mix(tmp_path, store, tiny, tiny_bf16):
    job_id, sent = job(tmp_path, store, precision="any")
    run_shard(sent[0], runtime_of(store, tiny))
    run_shard(sent[1], runtime_of(store, tiny_bf16))
    run_shard(sent[2], runtime_of(store, tiny))
    assert finalize_if_complete(store, job_id) is JobState.COMPLETED
    model = json.loads((tmp_path / "out" / "_manifest.json").read_text())["model"]
    assert model["compute_dtype"] == "mixed"
    assert model["compute_dtypes"] == ["bfloat16", "float32"]


def test_status_says_what_the_job_waits_for(tmp_path, store):
    job_id, _ = job(tmp_path, store)
    store.note_waiting(job_id, "job x waits for a worker serving embed model 'random:tiny'")
    status = store.status(job_id)
    assert status.waiting is not None and "random:tiny" in status.waiting
    assert "  waiting    job x waits" in describe(status)
