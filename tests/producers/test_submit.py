"""Shard limits, worst-case tokens against the visibility timeout, and submission."""

from __future__ import annotations

import json

import pytest

from pipeline.inputs.intake import document_bytes
from pipeline.tasks.embed import cut_document_shards, oversize_reason, worst_case_tokens
from producers.submit import ShardLimits, SubmitRequest, submit_job
from schemas.document import Document
from schemas.job import JobState, ShardState
from schemas.options import EncodeOptions

TRUNCATE = EncodeOptions(max_length=512)
CHUNK = EncodeOptions(max_length=512, long_docs="chunk", chunk_overlap=10)


def test_worst_case_tokens_bounds():
    assert worst_case_tokens(100, TRUNCATE) == 102  # every byte a token, plus CLS and EOS
    assert worst_case_tokens(10_000, TRUNCATE) == 512  # truncated
    assert worst_case_tokens(10_000, CHUNK) == 20 * 512  # ceil(10000 / 500) chunks


def test_limits_follow_the_visibility_timeout():
    limits = ShardLimits.plan(1000, 1 << 20, visibility_timeout=60, planned_tokens_per_second=100)
    assert limits.tokens == 3000  # half of 60 s at 100 tokens/s


def test_shards_respect_every_limit():
    docs = [Document(id=f"d{i}", text="x" * (50 + i)) for i in range(200)]
    limits = ShardLimits(items=30, bytes=2000, tokens=1500)
    shards = list(cut_document_shards(docs, limits, TRUNCATE))
    assert [d.id for shard in shards for d in shard] == [d.id for d in docs]
    for shard in shards:
        assert len(shard) <= 30
        assert sum(document_bytes(d) for d in shard) <= 2000
        assert sum(worst_case_tokens(document_bytes(d), TRUNCATE) for d in shard) <= 1500


def test_oversize_documents_are_named():
    limits = ShardLimits(items=10, bytes=4096, tokens=3000)
    assert "message limit" in oversize_reason(Document(id="a", text="x" * 5000), limits, TRUNCATE)
    assert "visibility timeout" in oversize_reason(Document(id="b", text="x" * 4000), limits, CHUNK)
    assert oversize_reason(Document(id="c", text="x" * 4000), limits, TRUNCATE) is None


def test_submit_job_enqueues_and_accounts_every_record(store, tmp_path):
    inp = tmp_path / "in.jsonl"
    big = "y" * 5000
    lines = [{"id": f"d{i}", "text": f"text {i}"} for i in range(25)]
    lines += [{"id": "big", "text": big}, {"id": "d3", "text": "dup"}, {"nope": 1}]
    inp.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    sent = []
    request = SubmitRequest(
        inputs=[inp], out=tmp_path / "out", model="random:tiny", options=TRUNCATE,
        queue="q", limits=ShardLimits(items=10, bytes=4096, tokens=100_000), max_queued=100,
    )  # fmt: skip
    result = submit_job(
        request, store, lambda message, queue, priority: sent.append((message, queue))
    )
    assert result.shards == 3 and [m.size for m, _ in sent] == [10, 10, 5]
    assert all(m.ref is not None and not m.documents for m, _ in sent)  # by reference
    assert {q for _, q in sent} == {"q"} and [m.shard for m, _ in sent] == [0, 1, 2]
    assert (result.counts.input_records, result.counts.rejected) == (28, 3)
    status = store.status(result.job_id)
    assert status.submitted and status.shards.total == 3 and status.shards.queued == 3
    assert store.shard_states(result.job_id) == dict.fromkeys(range(3), ShardState.QUEUED)
    rejects = (tmp_path / "out" / "_rejects.jsonl").read_text().splitlines()
    reasons = [json.loads(r)["reason"] for r in rejects]
    assert (
        "message limit" in reasons[0] and "duplicate" in reasons[1] and "missing id" in reasons[2]
    )


def test_a_failing_input_marks_the_job_failed(store, tmp_path):
    request = SubmitRequest(
        inputs=[tmp_path / "missing.jsonl"], out=tmp_path / "out", model="m", options=TRUNCATE,
        queue="q", limits=ShardLimits(items=10, bytes=4096, tokens=1000), max_queued=1,
    )  # fmt: skip
    with pytest.raises(Exception, match="not found"):
        submit_job(request, store, lambda m, q, p: None)
    (tmp_path / "empty.jsonl").write_text("")
    request.inputs = [tmp_path / "empty.jsonl"]
    request.overwrite = True
    with pytest.raises(Exception, match="no records"):
        submit_job(request, store, lambda m, q, p: None)
    [job_id] = store.job_ids()
    assert store.state(job_id) is JobState.FAILED


def test_a_job_lost_from_redis_mid_submit_is_one_clear_error(store, tmp_path):
    """Redis restarted without persistence while submitting (issue 28, item 7): the job's
    keys are gone. Once `ValueError: None is not a valid JobState`; now one error that says
    what happened and what to run, and the job's directory is free again."""
    from pipeline.errors import JobLost
    from pipeline.storage.location import open_location
    from pipeline.storage.output_lease import read_lease

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"d{i}", "text": f"t {i}"}) + "\n" for i in range(30)))
    request = SubmitRequest(
        inputs=[inp], out=tmp_path / "out", model="random:tiny", options=TRUNCATE,
        queue="q", limits=ShardLimits(items=10, bytes=4096, tokens=100_000), max_queued=100,
    )  # fmt: skip

    def publish(message, queue, priority):
        if message.shard == 1:
            store.redis.flushall()  # a restart without persistence

    with pytest.raises(JobLost, match=r"vanished from Redis while it was submitted.*--resume"):
        submit_job(request, store, publish)
    assert read_lease(open_location(tmp_path / "out")) is None
