"""The producer's one-loop document path makes what the generic intake and cutter make:
the same shards, the same rejects with the same reasons, the same counts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.inputs.intake import IntakeCounts, read_batches
from pipeline.inputs.sharding import ShardLimits
from pipeline.inputs.validate import InputItem
from pipeline.tasks.embed import EmbedTask
from pipeline.tasks.kind import TaskKind
from schemas.document import Document, Reject
from schemas.options import EncodeOptions, LongDocPolicy


class Rejects(list[Reject]):
    def add(self, reject: Reject) -> None:
        self.append(reject)


texts = st.one_of(
    st.integers(min_value=1, max_value=400).map(lambda n: "w" * n),
    st.integers(min_value=1, max_value=150).map(lambda n: "東" * n),  # 3 bytes a character
)
items = st.lists(
    st.one_of(
        st.builds(
            lambda i, text, line: InputItem(Document(id=f"d{i}", text=text), line=line),
            st.integers(min_value=0, max_value=8),  # few ids: many duplicates
            texts,
            st.integers(min_value=1, max_value=99),
        ),
        st.builds(
            lambda row: InputItem(Reject(source="s", row=row, reason="bad"), row=row),
            st.integers(min_value=1, max_value=99),
        ),
        st.builds(
            lambda i, name: InputItem(Document(id=f"d{i}", text="t"), file=name),
            st.integers(min_value=0, max_value=8),
            st.sampled_from(["a.txt", "b.txt"]),
        ),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    sources=st.lists(items, min_size=1, max_size=3),
    shard_items=st.integers(min_value=1, max_value=7),
    shard_bytes=st.integers(min_value=50, max_value=1500),
    shard_tokens=st.integers(min_value=100, max_value=1500),
    chunk=st.booleans(),
    strict=st.booleans(),
)
def test_one_loop_makes_what_the_generic_path_makes(
    sources, shard_items, shard_bytes, shard_tokens, chunk, strict
):
    limits = ShardLimits(items=shard_items, bytes=shard_bytes, tokens=shard_tokens)
    long_docs = LongDocPolicy.CHUNK if chunk else LongDocPolicy.TRUNCATE
    options = EncodeOptions(max_length=64, long_docs=long_docs)
    named = [(f"in{i}.jsonl", source) for i, source in enumerate(sources)]

    def run(shards_of) -> tuple[list[list[str]], Rejects, IntakeCounts]:
        rejects, counts = Rejects(), IntakeCounts()
        shards = shards_of(EmbedTask(), named, options, limits, rejects, counts, strict=strict)
        return [[doc.id + doc.text for doc in shard] for shard in shards], rejects, counts

    assert run(EmbedTask.shards) == run(TaskKind.shards)


def test_documents_that_fill_a_shard_exactly_share_it():
    """Two documents of half the byte limit each fit one shard: the limit is inclusive."""
    docs = [InputItem(Document(id=f"d{i}", text="w" * 48), line=i + 1) for i in range(4)]
    limits = ShardLimits(items=10, bytes=100, tokens=10_000)
    options = EncodeOptions(max_length=64)
    for shards_of in (EmbedTask.shards, TaskKind.shards):
        shards = shards_of(
            EmbedTask(),
            [("in.jsonl", docs)],
            options,
            limits,
            Rejects(),
            IntakeCounts(),
            strict=True,
        )
        assert [len(shard) for shard in shards] == [2, 2]


def test_read_ahead_for_the_id_lookup_is_bounded_in_bytes():
    """Long documents come in small batches: at most ~1 MB of text read ahead, not 1,024
    documents (which at the 8 MB record limit would be 8 GB)."""
    docs = [InputItem(Document(id=f"d{i}", text="w" * 300_000), line=i) for i in range(10)]
    batches = list(read_batches(docs))
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert [item for batch in batches for item in batch] == docs
    assert [len(batch) for batch in read_batches(items_of(3000))] == [1024, 1024, 952]


def items_of(count: int) -> list[InputItem]:
    return [InputItem(Document(id=f"d{i}", text="t"), line=i) for i in range(count)]
