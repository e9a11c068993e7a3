"""Tenants on a real Redis: names, queues, limits, usage, admission and shard quotas."""

from __future__ import annotations

import json
import threading
import time

import pytest

from pipeline.cli.tenants import consumer_queues
from pipeline.errors import QuotaExceeded
from pipeline.jobs.finish import finalize_if_complete
from pipeline.jobs.shard_report import ShardReport
from pipeline.jobs.tenant_records import (
    set_tenant_limits,
    tenant_limits,
    tenant_names,
    tenant_usage,
)
from pipeline.settings import Settings
from producers.submit import ShardLimits, SubmitRequest, submit_job
from schemas.job import JobState
from schemas.options import EncodeOptions
from schemas.tenant import Priority, TenantLimits, checked_tenant, tenant_queue


def test_tenant_names_queues_and_consumer_queues():
    assert tenant_queue("m3pipe", "default") == "m3pipe"  # single-team clusters see no change
    assert tenant_queue("m3pipe", "acme") == "m3pipe.acme"
    for bad in ("", "Acme", "a b", "-x", "a" * 33, "../x", "a.b"):
        with pytest.raises(ValueError, match="tenant name"):
            checked_tenant(bad)
    settings = Settings(queue="pool")
    assert consumer_queues(None, None, settings) == ["pool"]
    assert consumer_queues(None, "a,b", settings) == ["pool.a", "pool.b"]
    assert consumer_queues("x", "a,default", settings) == ["x", "pool.a", "pool"]
    with pytest.raises(ValueError, match="at least one tenant"):
        consumer_queues(None, " , ", settings)
    assert [p.broker_priority for p in Priority] == [0, 3, 6]  # kombu takes step 0 first


def request(tmp_path, name: str, docs: int, tenant: str, max_queued: int = 100) -> SubmitRequest:
    inp = tmp_path / f"{name}.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": f"t {i}"}) + "\n" for i in range(docs))
    )
    return SubmitRequest(
        inputs=[inp], out=tmp_path / name, model="random:tiny", options=EncodeOptions(),
        queue=tenant_queue("q", tenant), limits=ShardLimits(items=1, bytes=4096, tokens=10**6),
        max_queued=max_queued, tenant=tenant, priority=Priority.HIGH, poll_seconds=0.02,
    )  # fmt: skip


def test_limits_are_replaced_and_usage_counts_active_jobs_only(store, tmp_path):
    set_tenant_limits(store, "acme", TenantLimits(max_jobs=2, max_queued=5))
    set_tenant_limits(store, "acme", TenantLimits(max_in_flight=7))  # replaces, not merges
    assert tenant_limits(store, "acme") == TenantLimits(max_in_flight=7)
    sent = []
    first = submit_job(request(tmp_path, "a", 3, "acme"), store, lambda *m: sent.append(m))
    submit_job(request(tmp_path, "b", 2, "other"), store, lambda *m: sent.append(m))
    assert {(q, p) for _, q, p in sent} == {("q.acme", Priority.HIGH), ("q.other", Priority.HIGH)}
    assert tenant_names(store) == ["acme", "other"]
    usage = tenant_usage(store, "acme")
    assert (usage.jobs, usage.queued, usage.running, usage.in_flight) == (1, 3, 0, 3)
    assert store.status(first.job_id).tenant == "acme"
    store.cancel(first.job_id)
    assert tenant_usage(store, "acme").jobs == 0  # an ended job leaves the tenant's index
    assert tenant_usage(store, "other").queued == 2


def test_admission_refuses_a_job_over_the_tenant_job_limit_before_anything_is_written(
    store, tmp_path
):
    set_tenant_limits(store, "acme", TenantLimits(max_jobs=1))
    submit_job(request(tmp_path, "a", 2, "acme"), store, lambda *m: None)
    with pytest.raises(QuotaExceeded, match="tenant acme has 1 active job"):
        submit_job(request(tmp_path, "b", 2, "acme"), store, lambda *m: None)
    assert not (tmp_path / "b").exists() and len(store.job_ids()) == 1
    submit_job(request(tmp_path, "c", 2, "other"), store, lambda *m: None)  # others unaffected


def test_a_submit_waits_at_the_tenant_shard_quota_and_goes_on_when_shards_end(store, tmp_path):
    set_tenant_limits(store, "acme", TenantLimits(max_queued=2))
    sent = []
    result = {}

    def produce():
        job = request(tmp_path, "a", 6, "acme")
        result["job"] = submit_job(job, store, lambda message, *_: sent.append(message))

    producer = threading.Thread(target=produce)
    producer.start()
    deadline = time.monotonic() + 10
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert len(sent) == 2 and producer.is_alive()  # held at the quota, not refused
    [job_id] = store.job_ids()
    for index in range(6):  # play the worker: each shard ends, making room for the next
        while len(sent) <= index and time.monotonic() < deadline + 10:
            time.sleep(0.02)
        assert tenant_usage(store, "acme").queued <= 2
        # Its file too: whichever of submit and this loop ends the last shard checks them.
        name = f"part-{index:05d}.parquet"
        (tmp_path / "a" / name).write_bytes(b"")
        store.mark_done(job_id, index, ["queued"], ShardReport(1, 1, 1, 0))
    producer.join(timeout=10)
    assert [m.shard for m in sent] == list(range(6))
    assert result["job"].counts.documents == 6
    assert finalize_if_complete(store, job_id) is JobState.COMPLETED
    assert store.status(job_id).shards.done == 6


def test_tenants_set_refuses_bad_limits_before_reaching_redis(capsys, monkeypatch):
    from pipeline.cli.main import main
    from pipeline.exit_codes import EXIT_USAGE

    monkeypatch.setenv("M3PIPE_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    assert main(["tenants", "set", "acme", "--max-jobs", "0"]) == EXIT_USAGE
    assert "max_jobs" in capsys.readouterr().err
    assert main(["tenants", "set", "Acme!"]) == EXIT_USAGE
    assert "tenant name" in capsys.readouterr().err
