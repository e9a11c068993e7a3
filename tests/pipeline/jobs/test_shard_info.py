"""A done shard's counts as Redis keeps them: a fixed 28-byte record in one string per job.
Every count reads back as written, next to other shards' (hypothesis, a real Redis), and a
count that does not fit its record is refused rather than wrapped."""

from __future__ import annotations

import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.jobs.shard_report import COUNT_RECORD_BITS, MAX_SHARDS, ShardReport
from pipeline.jobs.store import ABSENT
from schemas.job import JobSpec, ShardState
from schemas.options import EncodeOptions

Q, D = ShardState.QUEUED, ShardState.DONE
u32 = st.integers(0, 2**32 - 1)
i63 = st.integers(0, 2**63 - 1)
# Tokens under 2^62: a done shard's tokens are added to the job's total too (an i64), and
# two shards' sum must fit it (2^62 + 2^62 does not); the record's own limit is tested below.
done_counts = st.fixed_dictionaries(
    {"documents": u32, "rows": u32, "tokens": st.integers(0, 2**62 - 1), "bytes": i63},
    optional={"reused": st.integers(0, 2**32 - 2)},
)


def new_job(store, tmp_path) -> str:
    job_id = f"job-{uuid.uuid4().hex[:8]}"
    spec = JobSpec(
        job_id=job_id, inputs=["in.jsonl"], out=str(tmp_path), model="random:tiny",
        options=EncodeOptions(), queue="m3pipe", shard_docs=10, shard_bytes=4096,
        max_queued=4, created_at=time.time(),
    )  # fmt: skip
    store.create(spec)
    return job_id


def finish(store, job_id: str, shard: int, info: dict) -> None:
    store.mark_shard(job_id, shard, Q, [ABSENT], {"documents": 1})
    store.mark_done(job_id, shard, [Q.value], ShardReport.from_counts(info))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shard=st.integers(0, 2500), info=done_counts, neighbour=done_counts)
def test_a_done_shards_counts_read_back_equal_beside_its_neighbours(
    store, tmp_path, shard, info, neighbour
):
    job_id = new_job(store, tmp_path)
    finish(store, job_id, shard, {**info, "worker": "w", "seconds": 1.5})  # extras not kept
    finish(store, job_id, shard + 1, neighbour)
    assert store.infos_of(job_id, [shard, shard + 1]) == {shard: info, shard + 1: neighbour}
    records = list(store.shard_records(job_id, shard + 2, batch=700))
    assert records[shard] == (shard, D, info) and records[shard + 1] == (shard + 1, D, neighbour)
    assert store.shard_infos(job_id) == {shard: info, shard + 1: neighbour}
    # One byte of state and one record of counts per shard, whatever the values.
    assert store.redis.strlen(f"m3pipe:job:{job_id}:shard-states") == shard + 2
    assert store.redis.strlen(f"m3pipe:job:{job_id}:shard-counts") == (
        (shard + 2) * COUNT_RECORD_BITS // 8
    )
    store.forget(job_id)


@pytest.mark.parametrize(
    "bad",
    [{"documents": 2**32}, {"tokens": 2**63}, {"rows": -1}, {"bytes": True}, {"reused": 2**32 - 1},
     {"documents": 1.0}],
)  # fmt: skip
def test_a_count_that_does_not_fit_its_record_is_refused(bad):
    with pytest.raises(ValueError, match="done shard"):
        ShardReport.from_counts({"documents": 1, **bad}).record_args()


def test_a_shard_number_past_the_records_reach_is_refused(store, tmp_path):
    job_id = new_job(store, tmp_path)
    with pytest.raises(ValueError, match="outside"):
        store.mark_shard(job_id, MAX_SHARDS, Q, [ABSENT], {"documents": 1})
