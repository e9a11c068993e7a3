"""Rerank intake: duplicate pairs, group numbers, oversize units, and shards of whole groups."""

import json

import pytest

from pipeline.inputs.intake import IntakeCounts
from pipeline.inputs.pair_intake import accept_pairs, pair_bytes
from pipeline.inputs.readers.formats import read_pair_records
from pipeline.inputs.sharding import ShardLimits
from pipeline.tasks.rerank import cut_pair_shards, oversize_reason, worst_case_pair_tokens
from schemas.job import JobSpec, ShardMessage, Task
from schemas.options import EncodeOptions
from schemas.pair import Pair, RerankOptions

OPTIONS = RerankOptions(max_length=64)
ROOMY = ShardLimits(items=1000, bytes=1 << 30, tokens=1 << 40)


class Rejects(list):
    def add(self, reject):
        self.append(reject)


def grouped(query_id, n, passage="a passage"):
    candidates = [{"doc_id": f"{query_id}-d{i}", "passage": f"{passage} {i}"} for i in range(n)]
    return {"query_id": query_id, "query": f"query {query_id}", "candidates": candidates}


def flat(query_id, doc_id, passage="text"):
    return {"query_id": query_id, "query": "q", "doc_id": doc_id, "passage": passage}


def intake(tmp_path, records, limits=ROOMY):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rejects, counts = Rejects(), IntakeCounts()
    units = list(
        accept_pairs(
            [(str(path), read_pair_records(path))],
            rejects,
            counts,
            check=lambda unit: oversize_reason(unit, limits, OPTIONS),
        )
    )
    assert counts.balanced()
    return units, rejects, counts


def test_duplicate_pairs_first_wins_and_groups_are_numbered(tmp_path):
    records = [
        grouped("q1", 3),
        flat("q2", "x"),
        flat("q2", "x", "again"),  # the same (query_id, doc_id): rejected
        flat("q1", "q1-d1"),  # already a candidate of q1: rejected
        flat("q3", "x"),  # same doc_id, other query: a different pair
        grouped("q4", 2),
    ]
    units, rejects, counts = intake(tmp_path, records)
    assert [[(p.query_id, p.doc_id, p.group) for p in u] for u in units] == [
        [("q1", "q1-d0", 0), ("q1", "q1-d1", 0), ("q1", "q1-d2", 0)],
        [("q2", "x", None)],
        [("q3", "x", None)],
        [("q4", "q4-d0", 1), ("q4", "q4-d1", 1)],
    ]
    assert [(r.line, r.query_id, r.id) for r in rejects] == [(3, "q2", "x"), (4, "q1", "q1-d1")]
    assert all("duplicate pair" in r.reason and "line" in r.reason for r in rejects)
    assert (counts.input_records, counts.documents, counts.rejected) == (9, 7, 2)


def test_a_group_above_the_message_limit_is_rejected_whole_with_a_reason(tmp_path):
    big = grouped("big", 5, passage="x" * 300)
    limits = ShardLimits(items=1000, bytes=1000, tokens=1 << 40)
    units, rejects, counts = intake(tmp_path, [grouped("small", 2), big], limits)
    assert [u[0].query_id for u in units] == ["small"]
    assert [r.id for r in rejects] == [f"big-d{i}" for i in range(5)]
    assert "above the 1,000-byte message limit" in rejects[0].reason
    assert "never split" in rejects[0].reason
    assert (counts.documents, counts.rejected) == (2, 5)


def test_shards_hold_whole_groups_within_the_limits():
    def unit(query_id, n, group):
        return [
            Pair(query_id=query_id, query="q", doc_id=str(i), passage="p" * 10, group=group)
            for i in range(n)
        ]

    units = [unit("a", 2, 0), unit("b", 2, 1), unit("c", 5, 2), unit("d", 1, 3), unit("e", 1, 4)]
    shards = list(
        cut_pair_shards(units, ShardLimits(items=3, bytes=1 << 30, tokens=1 << 40), OPTIONS)
    )
    assert [[p.query_id for p in s] for s in shards] == [
        ["a", "a"],
        ["b", "b"],
        ["c"] * 5,  # larger than the limit: alone, never split
        ["d", "e"],
    ]
    # Bytes bound shards as well: two units' bytes do not fit one shard here.
    one = sum(pair_bytes(p) for p in units[0])
    by_bytes = list(
        cut_pair_shards(units[:2], ShardLimits(items=100, bytes=one + 1, tokens=1 << 40), OPTIONS)
    )
    assert [len(s) for s in by_bytes] == [2, 2]
    # So do worst-case tokens: a pair costs at most max_length tokens.
    assert (
        worst_case_pair_tokens(
            Pair(query_id="q", query="q" * 500, doc_id="d", passage="p"), OPTIONS
        )
        == 64
    )


def test_shard_message_holds_exactly_one_payload_and_a_rerank_spec_needs_its_options():
    pair = Pair(query_id="q", query="query", doc_id="d", passage="passage", group=3)
    message = ShardMessage(job_id="job-1", shard=0, pairs=[pair])
    wire = message.wire()
    assert "documents" not in wire and ShardMessage.model_validate(wire) == message
    with pytest.raises(ValueError, match="exactly one"):
        ShardMessage(job_id="job-1", shard=0)
    with pytest.raises(ValueError, match="exactly one"):
        ShardMessage.model_validate(
            {
                "job_id": "job-1",
                "shard": 0,
                "pairs": [pair],
                "documents": [{"id": "a", "text": "b"}],
            }
        )
    base = dict(
        job_id="job-1", inputs=["x"], out="/o", model="m", queue="q", shard_docs=1,
        shard_bytes=2048, max_queued=1, created_at=0.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="rerank options"):
        JobSpec(**base, task=Task.RERANK)
    with pytest.raises(ValueError, match="rerank options"):
        JobSpec(**base, rerank=RerankOptions())
    spec = JobSpec(**base, task=Task.RERANK, rerank=RerankOptions())
    assert spec.options == EncodeOptions()
    assert JobSpec.model_validate_json(spec.model_dump_json()) == spec
