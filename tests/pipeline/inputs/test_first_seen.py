"""The first-seen index behind the duplicate policies: exact in memory, on disk and across
the move between them, and gone when closed."""

import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.inputs.indexes import first_seen
from pipeline.inputs.indexes.first_seen import FirstSeen
from pipeline.inputs.intake import DuplicateIds, IntakeCounts, accept_documents
from pipeline.inputs.pair_intake import DuplicatePairs
from pipeline.inputs.validate import InputItem
from schemas.document import Document, Reject
from schemas.pair import Pair

# Where the keys are: all on disk, moved there after the third, all in memory.
WHERE = [0, 3, None]


@pytest.mark.parametrize("memory_keys", WHERE)
def test_the_first_where_is_kept_and_later_offers_name_it(tmp_path, memory_keys):
    with FirstSeen(tmp_path, memory_keys=memory_keys) as seen:
        assert seen.first("a", "f.jsonl line 1") is None
        assert seen.first("b", "f.jsonl line 2") is None
        assert seen.first("a", "f.jsonl line 3") == "f.jsonl line 1"
        assert seen.first("a", "g.jsonl line 9") == "f.jsonl line 1"
        assert seen.first("ünï ☃ 🚀", "x") is None
        assert seen.first("ünï ☃ 🚀", "y") == "x"
        assert seen.first("A", "z") is None  # keys are exact: no case folding
        assert seen.first("b", "again") == "f.jsonl line 2"
        directory = seen.directory
        if memory_keys is None:
            assert directory is None and list(tmp_path.iterdir()) == []  # never on disk
        else:
            assert directory is not None
            assert directory.parent == tmp_path and directory.exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="closed"):
        seen.first("a", "again")


def test_keys_flushed_to_disk_and_compacted_are_still_found(tmp_path):
    # A 256 kB write buffer: 60,000 keys go through many flushes and compactions (the
    # first 1,000 held in memory, then moved in one write).
    with FirstSeen(tmp_path, write_buffer_bytes=256 << 10, memory_keys=1000) as seen:
        for i in range(60_000):
            assert seen.first(f"doc-{i}", f"line {i}") is None
        files = [p for p in seen.directory.iterdir() if p.suffix == ".sst"]
        assert files, "nothing reached disk: the test would not test the disk path"
        for i in range(0, 60_000, 997):
            assert seen.first(f"doc-{i}", "later") == f"line {i}"
        assert seen.first("doc-60000", "new") is None


@pytest.mark.parametrize("memory_keys", WHERE)
@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.text(min_size=1, max_size=12), max_size=80))
def test_it_answers_like_a_dict(keys, memory_keys):
    expected: dict[str, str] = {}
    with FirstSeen(memory_keys=memory_keys) as seen:
        for n, key in enumerate(keys):
            assert seen.first(key, str(n)) == expected.get(key)
            expected.setdefault(key, str(n))


@pytest.mark.parametrize("memory_keys", WHERE)
@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(st.sampled_from("abcdef"), max_size=8), max_size=8))
def test_batched_lookups_answer_like_one_at_a_time(batches, memory_keys):
    """Keys repeated inside one batch and across batches: the first place always wins."""
    expected: dict[str, str] = {}
    n = 0
    with FirstSeen(memory_keys=memory_keys) as seen:
        for batch in batches:
            wheres = [str(n + i) for i in range(len(batch))]
            answers = seen.first_many(list(batch), wheres)
            for key, where, answer in zip(batch, wheres, answers, strict=True):
                assert answer == expected.get(key)
                expected.setdefault(key, where)
            n += len(batch)


def test_pair_keys_do_not_run_together():
    with FirstSeen() as seen:
        pairs = DuplicatePairs(seen)

        def pair(query_id: str, doc_id: str) -> Pair:
            return Pair(query_id=query_id, query="q", doc_id=doc_id, passage="p")

        assert pairs.check(pair("a", "bc"), "line 1") is None
        assert pairs.check(pair("ab", "c"), "line 2") is None  # not the same pair
        assert pairs.check(pair("a", "bc"), "line 3") == (
            "duplicate pair (query_id, doc_id) (first seen at line 1)"
        )


def test_duplicate_policy_first_wins():
    with FirstSeen() as seen:
        dupes = DuplicateIds(seen)
        assert dupes.check(Document(id="a", text="x"), "line 1") is None
        assert dupes.check(Document(id="b", text="x"), "line 2") is None
        reason = dupes.check(Document(id="a", text="y"), "line 3")
        assert reason == "duplicate id (first seen at line 1)"


class Rejects(list[Reject]):
    def add(self, reject: Reject) -> None:
        self.append(reject)


def items(n: int) -> list[InputItem]:
    return [InputItem(Document(id=str(i % 5), text="t"), line=i + 1) for i in range(n)]


def test_intake_removes_its_index_when_done_or_abandoned(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(first_seen, "MEMORY_KEYS", 0)  # on disk from the start
    rejects, counts = Rejects(), IntakeCounts()
    accepted = list(accept_documents([("in.jsonl", items(12))], rejects, counts))
    assert [doc.id for doc in accepted] == ["0", "1", "2", "3", "4"]
    assert len(rejects) == 7 and counts.balanced()
    assert rejects[0].reason == "duplicate id (first seen at in.jsonl line 1)"
    assert list(tmp_path.iterdir()) == []

    stream = accept_documents([("in.jsonl", items(12))], Rejects(), IntakeCounts())
    next(stream)
    assert len(list(tmp_path.iterdir())) == 1  # the open index
    stream.close()  # a consumer that stops early (an error, a cancelled job)
    assert list(tmp_path.iterdir()) == []
