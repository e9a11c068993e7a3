"""Shards by reference: what the worker reads back is exactly what the producer accepted."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.inputs.references import (
    MAX_GAP_BYTES,
    InputChanged,
    read_reference,
    shard_reference,
)
from pipeline.inputs.sharding import ShardLimits
from pipeline.inputs.validate import DocumentShape
from pipeline.jobs.resume import documents_digest
from pipeline.storage.location import open_location
from pipeline.tasks import Reading, task_kind
from producers.messages import shard_message
from schemas.document import Document, Reject
from schemas.job import Task
from schemas.options import EncodeOptions
from schemas.shard_ref import Segment, ShardRef

SHAPE = DocumentShape()
LIMIT = 4096  # --max-record-bytes in these tests


class Rejects(list[Reject]):
    def add(self, reject: Reject) -> None:
        self.append(reject)


def cut(paths: list[Path], shard_docs: int = 3) -> list[list[Document]]:
    """The producer's shards of `paths`, as submit cuts them."""
    from pipeline.inputs.intake import IntakeCounts

    kind = task_kind(Task.EMBED)
    reading = Reading(max_record_bytes=LIMIT)
    sources = []
    for path in paths:
        location = open_location(path)
        sources.append((location.uri, kind.read(location, kind.detect_format(location), reading)))
    limits = ShardLimits(items=shard_docs, bytes=1 << 20, tokens=10**9)
    shards = kind.shards(sources, EncodeOptions(), limits, Rejects(), IntakeCounts(), strict=True)
    return [list(shard) for shard in shards]


def round_trip(paths: list[Path], shard_docs: int = 3) -> list[tuple[list[Document], ShardRef]]:
    inputs = {open_location(path).uri: i for i, path in enumerate(paths)}
    urls = [open_location(path).url for path in paths]
    result = []
    for shard in cut(paths, shard_docs):
        ref = shard_reference(shard, inputs, documents_digest(shard))
        assert ref is not None
        read = read_reference(ref, urls, SHAPE, LIMIT)
        assert dumps(read) == dumps(shard)  # (== would compare the producer's origins too)
        result.append((shard, ref))
    return result


def dumps(documents: list[Document]) -> list[dict]:
    return [doc.model_dump() for doc in documents]


def jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


VALID = st.builds(
    lambda i, text: json.dumps({"id": f"d{i}", "text": text}, ensure_ascii=False),
    st.integers(0, 30),  # an id pool: some duplicates
    st.text(min_size=1, max_size=20).map(lambda text: f"w{text}"),
)
NOISE = st.one_of(
    st.just(""),  # blank lines are not records
    st.just("{not json"),
    st.just('{"id": "x"}'),  # no text
    st.just(json.dumps({"id": "big", "text": "z" * (LIMIT + 10)})),  # over the record limit
    st.binary(max_size=12).map(lambda raw: raw.decode("latin-1")),
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.lists(VALID, max_size=30),
    noise=st.lists(NOISE, max_size=10),
    order=st.randoms(use_true_random=False),
    ending=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    last_newline=st.booleans(),
)
def test_any_input_reads_back_as_the_accepted_documents(
    tmp_path, records, noise, order, ending, bom, last_newline
):
    lines = records + noise
    order.shuffle(lines)
    path = tmp_path / "in.jsonl"
    body = ending.join(lines) + (ending if last_newline else "")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8", "surrogatepass"))
    round_trip([path])


def test_a_shard_across_two_inputs_and_a_big_gap_has_segments(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"id": "a1", "text": "one"}\n' + "x" * (MAX_GAP_BYTES + 1) + "\n")
    first.write_text(first.read_text() + '{"id": "a2", "text": "two"}\n')  # after the gap
    second.write_text('{"id": "b1", "text": "three"}\n\n{"id": "b2", "text": "four"}\n')
    [(shard, ref)] = round_trip([first, second], shard_docs=10)
    assert [doc.id for doc in shard] == ["a1", "a2", "b1", "b2"]
    assert [(s.input, s.runs) for s in ref.segments] == [
        (0, [(1, 1)]), (0, [(3, 3)]), (1, [(1, 1), (3, 3)])
    ]  # fmt: skip
    assert len(message_json(ref)) < 600  # bytes per shard, not per document


def message_json(ref: ShardRef) -> str:
    from schemas.job import ShardMessage

    return ShardMessage(job_id="job-1", shard=0, ref=ref).model_dump_json()


def test_a_thousand_long_documents_travel_in_a_few_hundred_bytes(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": "w " * 500}) + "\n" for i in range(1000))
    )
    [shard] = cut([path], shard_docs=1000)
    message = shard_message(
        "job-1", 0, shard, documents_digest(shard), {open_location(path).uri: 0}
    )
    assert message.ref is not None and message.size == 1000
    inline = shard_message("job-1", 0, shard)
    assert len(message.model_dump_json()) < 400 < 1_000_000 < len(inline.model_dump_json())


def test_compressed_input_is_sent_inline(tmp_path):
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"id": "a", "text": "one"}\n'))
    [shard] = cut([path])
    assert shard[0].origin is None
    message = shard_message(
        "job-1", 0, shard, documents_digest(shard), {open_location(path).uri: 0}
    )
    assert message.ref is None and message.documents == shard


def test_an_input_changed_after_submit_fails_the_read(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(6))
    )
    [(_, ref), _] = round_trip([path])
    url = [open_location(path).url]
    path.write_text(path.read_text().replace("text 1", "TEXT 1"))  # same length, other text
    with pytest.raises(InputChanged, match="no longer hold the documents accepted"):
        read_reference(ref, url, SHAPE, LIMIT)
    path.write_text(path.read_text().replace('"d2"', '"d2", "x"'))  # a line that is no longer JSON
    with pytest.raises(InputChanged):
        read_reference(ref, url, SHAPE, LIMIT)
    path.write_text('{"id": "d0", "text": "text 0"}\n')  # truncated
    with pytest.raises(InputChanged):
        read_reference(ref, url, SHAPE, LIMIT)
    path.unlink()
    with pytest.raises(InputChanged, match="is gone"):
        read_reference(ref, url, SHAPE, LIMIT)


def test_a_reference_can_only_name_the_jobs_inputs(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "one"}\n')
    [(_, ref)] = round_trip([path])
    forged = ref.model_copy(update={"segments": [ref.segments[0].model_copy(update={"input": 3})]})
    with pytest.raises(InputChanged, match="names input 3; the job has 1"):
        read_reference(forged, [open_location(path).url], SHAPE, LIMIT)


@pytest.mark.parametrize(
    "segment, error",
    [
        ({"start": 5, "end": 5}, "ends after it starts"),
        ({"runs": [(3, 4), (2, 2)]}, "ascending"),
        ({"runs": [(1, 2), (2, 3)]}, "ascending"),
        ({"first_line": 5, "runs": [(4, 4)]}, "from first_line"),
        ({"runs": []}, "at least 1"),
    ],
)
def test_forged_segments_are_refused(segment, error):
    fields = {"input": 0, "start": 0, "end": 10, "first_line": 1, "runs": [(1, 1)]} | segment
    with pytest.raises(ValidationError, match=error):
        Segment.model_validate(fields)


def test_a_reference_counts_its_documents():
    segment = Segment(input=0, start=0, end=10, first_line=1, runs=[(1, 3)])
    with pytest.raises(ValidationError, match="not the shard's documents"):
        ShardRef(segments=[segment], documents=2, digest="0" * 64)
