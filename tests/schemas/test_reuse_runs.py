"""Reuse runs in a shard message are parsed from the queue: whatever arrives, a message is
accepted only if its runs are ordered, disjoint and inside the shard."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.job import ShardMessage

DOCS = [{"id": f"d{i}", "text": "x"} for i in range(8)]

run = st.fixed_dictionaries(
    {
        "at": st.integers(-2, 10),
        "count": st.integers(-1, 10),
        "part": st.integers(-1, 3),
        "row": st.integers(-1, 20),
        "rows": st.integers(-1, 12),
    }
)


def valid(runs: list[dict[str, int]]) -> bool:
    end = 0
    for r in runs:
        if min(r["at"], r["part"], r["row"]) < 0 or r["count"] < 1 or r["rows"] < r["count"]:
            return False
        if r["at"] < end:
            return False
        end = r["at"] + r["count"]
    return end <= len(DOCS)


@given(st.lists(run, max_size=5))
def test_runs_are_accepted_exactly_when_they_fit_the_shard(runs):
    raw = {"job_id": "job-1", "shard": 0, "documents": DOCS, "reuse": runs}
    if valid(runs):
        message = ShardMessage.model_validate(raw)
        assert ShardMessage.model_validate(message.wire()) == message
    else:
        with pytest.raises(ValidationError):
            ShardMessage.model_validate(raw)


def test_rerank_shards_carry_no_runs_and_no_runs_leave_no_field():
    pair = {"query_id": "q", "query": "q", "doc_id": "d", "passage": "p"}
    runs = [{"at": 0, "count": 1, "part": 0, "row": 0, "rows": 1}]
    with pytest.raises(ValidationError, match="rerank shards reuse nothing"):
        ShardMessage.model_validate({"job_id": "job-1", "shard": 0, "pairs": [pair], "reuse": runs})
    plain = ShardMessage.model_validate({"job_id": "job-1", "shard": 0, "documents": DOCS})
    assert "reuse" not in plain.wire()  # older workers keep reading plain messages
