"""Shards cut from columns are what the document path cuts from the same inputs: the same
references and digests, the same rejects with the same reasons, the same counts."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.inputs.column_shards import column_shards
from pipeline.inputs.intake import IntakeCounts
from pipeline.inputs.read_ahead import read_ahead
from pipeline.inputs.readers.jsonl import read_jsonl
from pipeline.inputs.readers.jsonl_columns import read_columns
from pipeline.inputs.references import shard_reference
from pipeline.inputs.sharding import ShardLimits
from pipeline.inputs.validate import DocumentShape
from pipeline.jobs.resume import documents_digest
from pipeline.storage.location import open_location
from pipeline.tasks import embed
from pipeline.tasks.embed import EmbedTask, size_reason, worst_case_tokens
from pipeline.tasks.kind import Reading
from schemas.document import Reject
from schemas.options import EncodeOptions, LongDocPolicy
from tests.pipeline.inputs.jsonl_lines import jsonl_files, write_inputs


class Rejects(list[Reject]):
    def add(self, reject: Reject) -> None:
        self.append(reject)


@settings(max_examples=80, deadline=None)
@given(
    files=jsonl_files,
    keep=st.booleans(),
    shard_items=st.integers(min_value=1, max_value=7),
    shard_bytes=st.integers(min_value=50, max_value=1500),
    shard_tokens=st.integers(min_value=100, max_value=1500),
    chunk=st.booleans(),
    max_record_bytes=st.sampled_from([150, 8 << 20]),
)
def test_columns_cut_what_the_document_path_cuts(
    tmp_path_factory, files, keep, shard_items, shard_bytes, shard_tokens, chunk, max_record_bytes
):
    paths = write_inputs(tmp_path_factory.mktemp("cut"), files)
    limits = ShardLimits(items=shard_items, bytes=shard_bytes, tokens=shard_tokens)
    options = EncodeOptions(
        max_length=64, long_docs=LongDocPolicy.CHUNK if chunk else LongDocPolicy.TRUNCATE
    )
    shape = DocumentShape(keep_fields=("lang",) if keep else ())
    inputs = {open_location(path).uri: i for i, path in enumerate(paths)}

    def by_documents() -> tuple[list[str], Rejects, IntakeCounts]:
        rejects, counts = Rejects(), IntakeCounts()
        sources = [
            (uri, read_jsonl(uri, shape=shape, max_record_bytes=max_record_bytes)) for uri in inputs
        ]
        shards = EmbedTask().shards(sources, options, limits, rejects, counts, strict=True)
        refs = [shard_reference(shard, inputs, documents_digest(shard)) for shard in shards]
        assert None not in refs  # every document of a plain input can be pointed at
        return [ref.model_dump_json() for ref in refs if ref], rejects, counts

    def by_columns() -> tuple[list[str], Rejects, IntakeCounts]:
        rejects, counts = Rejects(), IntakeCounts()
        shards = column_shards(
            read_columns(paths, shape, max_record_bytes),
            inputs,
            rejects,
            counts,
            limits,
            lambda nbytes: worst_case_tokens(nbytes, options),
            lambda size: size_reason(size, limits) or "",
        )
        return [shard.ref.model_dump_json() for shard in shards], rejects, counts

    expected = by_documents()
    assert by_columns() == expected
    assert expected[2].balanced()


def test_documents_that_fill_a_shard_exactly_share_it(tmp_path):
    """Two documents of half the byte limit each fit one shard: the limit is inclusive."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(f'{{"id": "d{i}", "text": "{"w" * 48}"}}\n' for i in range(4)))
    limits = ShardLimits(items=10, bytes=100, tokens=10_000)
    shards = column_shards(
        read_columns([path], DocumentShape(), 1000),
        {open_location(path).uri: 0},
        Rejects(),
        IntakeCounts(),
        limits,
        lambda nbytes: nbytes,
        str,
    )
    assert [shard.ref.documents for shard in shards] == [2, 2]


@pytest.mark.parametrize("inline_below", [0, embed.INLINE_READ_BYTES])
def test_the_embed_task_reads_plain_jsonl_in_a_reading_process_or_inline(
    tmp_path, monkeypatch, inline_below
):
    """The same shards and rejects whether a reading process parses the input (a large one)
    or the producer does (one under INLINE_READ_BYTES, not worth a process's start)."""
    monkeypatch.setattr(embed, "INLINE_READ_BYTES", inline_below)
    spawned = []
    monkeypatch.setattr(embed, "read_ahead", lambda *args: spawned.append(1) or read_ahead(*args))
    plain = tmp_path / "in.jsonl"
    plain.write_text("".join(f'{{"id": "d{i % 7}", "text": "t{i}"}}\n' for i in range(20)))
    packed = tmp_path / "in.jsonl.gz"
    packed.write_bytes(b"")
    task, options, limits = (
        EmbedTask(),
        EncodeOptions(),
        ShardLimits(items=4, bytes=1 << 20, tokens=1 << 20),
    )
    rejects, counts = Rejects(), IntakeCounts()
    plain_loc, packed_loc = open_location(plain), open_location(packed)
    shards = task.referenced_shards(
        [plain_loc], ["jsonl"], Reading(), options, limits, rejects, counts
    )
    assert shards is not None
    assert [shard.ref.documents for shard in shards] == [4, 3]
    assert len(rejects) == 13 and counts.balanced() and counts.input_records == 20
    assert spawned == ([1] if inline_below == 0 else [])
    both = task.referenced_shards(
        [plain_loc, packed_loc], ["jsonl", "jsonl"], Reading(), options, limits, rejects, counts
    )
    assert both is None  # a compressed input cannot be pointed at: the document path


def test_many_or_unreadable_inputs_go_to_a_reading_process(tmp_path):
    small = tmp_path / "in.jsonl"
    small.write_text('{"id": "a", "text": "t"}\n')
    assert not embed.worth_a_reading_process([open_location(small)])
    many = [open_location(small)] * (embed.INLINE_READ_FILES + 1)
    assert embed.worth_a_reading_process(many)  # not sized one by one
    assert embed.worth_a_reading_process([open_location(tmp_path / "gone.jsonl")])
    large = tmp_path / "large.jsonl"
    with large.open("wb") as out:
        out.truncate(embed.INLINE_READ_BYTES)
    assert embed.worth_a_reading_process([open_location(small), open_location(large)])


def test_no_reading_process_is_left_behind_when_the_producer_stops_early(tmp_path, monkeypatch):
    """The child is killed when its consumer stops: nothing of it outlives a submit."""
    monkeypatch.setattr(embed, "INLINE_READ_BYTES", 0)
    path = tmp_path / "in.jsonl"
    path.write_text("".join(f'{{"id": "d{i}", "text": "t"}}\n' for i in range(100_000)))
    limits = ShardLimits(items=10, bytes=1 << 20, tokens=1 << 20)
    before = children()
    shards = EmbedTask().referenced_shards(
        [open_location(path)],
        ["jsonl"],
        Reading(),
        EncodeOptions(),
        limits,
        Rejects(),
        IntakeCounts(),
    )
    assert shards is not None
    next(shards)
    assert len(children() - before) == 1
    shards.close()
    assert children() == before


def children() -> set[int]:
    """This process's live child processes."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                found.add(int(entry))
    return found
