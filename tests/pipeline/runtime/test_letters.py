"""Letters: a failed (or retried) shard that carries its documents is kept in the job's output
directory, not in Redis; `m3pipe retry` reads it back, and the job's end removes it once the
shard is done. Real Redis, the real shard runner in-process, random:tiny."""

from __future__ import annotations

import json

import pytest

from pipeline.jobs.finish import finalize_if_complete
from pipeline.jobs.letters import (
    MAX_REDIS_LETTER_BYTES,
    LetterLost,
    letter_name,
    read_letter,
)
from pipeline.runtime.retry_policy import after_failure
from pipeline.runtime.shard_runner import fail_shard, run_shard
from pipeline.runtime.worker_models import WorkerModels
from pipeline.runtime.worker_runtime import WorkerRuntime
from pipeline.storage.location import open_location
from pipeline.storage.output_dir import LETTERS_DIR, prepare_output_dir
from producers.submit import ShardLimits, SubmitRequest, submit_job
from schemas.job import JobState, ShardState, Task
from schemas.options import EncodeOptions


@pytest.fixture
def runtime(store, tiny):
    models = WorkerModels(specs={Task.EMBED: "random:tiny"}, loader=lambda task, spec: tiny)
    return WorkerRuntime(models=models, store=store, hostname="t@host")


def submitted(tmp_path, store, inline: bool):
    corpus = tmp_path / "in.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": "word " * 200}) + "\n"
                              for i in range(20)))  # fmt: skip
    request = SubmitRequest(
        inputs=[corpus], out=tmp_path / "out", model="random:tiny",
        options=EncodeOptions(max_length=64), queue="q", max_queued=100,
        limits=ShardLimits(items=10, bytes=1 << 20, tokens=10**6), inline_shards=inline,
    )  # fmt: skip
    sent = []
    result = submit_job(request, store, lambda message, queue, priority: sent.append(message))
    return result.job_id, sent


def test_a_shard_carrying_documents_is_kept_in_the_output_directory(tmp_path, store, runtime):
    job_id, sent = submitted(tmp_path, store, inline=True)
    assert len(sent[0].model_dump_json()) > MAX_REDIS_LETTER_BYTES
    fail_shard(runtime, sent[0], "a permanent failure", "t@host")
    [kept] = store.dead_letters(job_id).values()
    assert len(kept) < 300  # a pointer and a digest: Redis holds no documents
    out = open_location(tmp_path / "out")
    assert (out / letter_name(0)).is_file()
    assert read_letter(kept, out).model_dump_json() == sent[0].model_dump_json()

    # `m3pipe retry`: the shard goes back to the queue and runs; the job's end removes the
    # letter of the shard that finished after all.
    assert store.reopen_shard(job_id, 0)
    run_shard(read_letter(kept, out), runtime)
    run_shard(sent[1], runtime)
    assert finalize_if_complete(store, job_id) is JobState.COMPLETED
    assert not (out / letter_name(0)).exists()


def test_a_shard_by_reference_is_kept_in_redis_as_it_is(tmp_path, store, runtime):
    job_id, sent = submitted(tmp_path, store, inline=False)
    fail_shard(runtime, sent[0], "a permanent failure", "t@host")
    [kept] = store.dead_letters(job_id).values()
    assert kept == sent[0].model_dump_json()
    assert not (tmp_path / "out" / LETTERS_DIR).exists()


def test_when_the_output_cannot_be_written_the_letter_stays_in_redis(tmp_path, store, runtime):
    job_id, sent = submitted(tmp_path, store, inline=True)
    runtime.output_roots = (str(tmp_path / "elsewhere"),)  # the job's out is not allowed
    fail_shard(runtime, sent[1], "output not allowed", "t@host")
    assert store.dead_letters(job_id)[1] == sent[1].model_dump_json()
    assert store.shard_state(job_id, 1) == ShardState.FAILED.value


def test_a_damaged_or_forged_letter_is_lost_not_trusted(tmp_path, store, runtime):
    job_id, sent = submitted(tmp_path, store, inline=True)
    fail_shard(runtime, sent[0], "failed", "t@host")
    kept = store.dead_letters(job_id)[0]
    out = open_location(tmp_path / "out")
    path = tmp_path / "out" / letter_name(0)
    path.write_text(path.read_text().replace("word", "WORD"))
    with pytest.raises(LetterLost, match="not the message that failed"):
        read_letter(kept, out)
    path.unlink()
    with pytest.raises(LetterLost, match="cannot be read"):
        read_letter(kept, out)
    forged = json.dumps({"spilled": "../../etc/passwd", "sha256": "0"})
    with pytest.raises(LetterLost, match="not a letter of the output directory"):
        read_letter(forged, out)


def test_overwrite_and_resume_clear_letters_and_the_directory_is_not_foreign(tmp_path, store,
                                                                             runtime):  # fmt: skip
    _, sent = submitted(tmp_path, store, inline=True)
    fail_shard(runtime, sent[0], "failed", "t@host")
    out = tmp_path / "out"
    prepare_output_dir(out, resume=True)  # `_letters/` is m3pipe's own: not refused
    assert not (out / letter_name(0)).exists()
    (out / LETTERS_DIR / "shard-0000003.json").write_text("{}")
    with pytest.raises(Exception, match="already holds output"):
        prepare_output_dir(out)
    prepare_output_dir(out, overwrite=True)
    assert list((out / LETTERS_DIR).iterdir()) == []


def test_a_retry_letter_of_a_shard_carrying_documents_is_kept_the_same_way(
    tmp_path, store, runtime
):
    """A shard waiting for its next attempt: its kept message (for a lost retry) is a
    pointer too; the shard's end drops the pointer, the job's end the finished letter."""
    job_id, sent = submitted(tmp_path, store, inline=True)
    store.mark_shard(job_id, 0, ShardState.RUNNING, ["queued", "running"])
    store.count_attempt(job_id, 0)
    assert after_failure(runtime, sent[0], OSError("disk hiccup"), "t@host") is not None
    kept = store.retry_letter(job_id, 0)
    assert kept is not None and len(kept) < 300
    out = open_location(tmp_path / "out")
    assert read_letter(kept, out).model_dump_json() == sent[0].model_dump_json()
    run_shard(read_letter(kept, out), runtime)
    assert store.retry_letter(job_id, 0) is None
    run_shard(sent[1], runtime)
    assert finalize_if_complete(store, job_id) is JobState.COMPLETED
    assert not (out / letter_name(0)).exists()


def test_retry_counts_a_changed_letter_lost_and_says_the_way_out(
    tmp_path, store, runtime, redis_server, monkeypatch, capsys
):
    from pipeline.cli.main import main

    job_id, sent = submitted(tmp_path, store, inline=True)
    fail_shard(runtime, sent[0], "a permanent failure", "t@host")
    (tmp_path / "out" / letter_name(0)).write_text(sent[1].model_dump_json())  # forged
    monkeypatch.setenv("M3PIPE_BROKER_URL", redis_server.url)
    assert main(["retry", job_id]) != 0
    err = capsys.readouterr().err
    assert "shard 0: dead letter" in err and "is not the message that failed" in err
    # Shard 1 was never delivered (its message was only collected here): orphaned, none kept.
    assert "0 shard(s) re-enqueued" in err and "2 shard(s) have no kept message (0, 1)" in err
    assert store.shard_state(job_id, 0) == ShardState.FAILED.value  # not reopened
