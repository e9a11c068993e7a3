"""`--reuse`: unchanged documents are copied from a previous output, the rest encoded, and
the result is row for row what a full encode gives. Real files, random:tiny on CPU.
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine.embedder import EmbedEngine
from pipeline.errors import InputNotAllowed, ReuseError
from pipeline.inputs.indexes.reuse_index import ReuseIndex
from pipeline.local.process import process_file
from pipeline.runtime.shard_runner import run_shard
from pipeline.storage.finished_output import (
    DOCUMENT_DIGESTS_KEY,
    FinishedOutput,
    document_digest,
    with_document_digests,
)
from pipeline.storage.output_dir import MANIFEST, read_shard_log
from pipeline.tasks import Reading, task_kind
from pipeline.tasks.reuse import ReuseStream, ShardReuse
from schemas.document import Document
from schemas.job import Task
from schemas.options import EncodeOptions, LongDocPolicy, StorageDtype
from schemas.reuse_plan import ReuseRun
from schemas.vector_layout import colbert_floats, colbert_rows, colbert_vectors, dense_floats

EMBED = task_kind(Task.EMBED)
# float32 storage, so copied and re-encoded vectors compare at the parity bound.
OPTIONS = EncodeOptions(max_length=64, dtype=StorageDtype.FLOAT32)
WORDS = ["alpha", "beta", "gamma", "delta", "эпсилон", "ζήτα", "日本語", "emoji 🙂"]


def stored(**storage: object) -> EncodeOptions:
    """OPTIONS with compact storage options."""
    return EncodeOptions.model_validate({**OPTIONS.model_dump(), **storage})


def corpus(count: int, seed: int = 0) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    return [
        {"id": f"d{i:03d}", "text": " ".join(rng.choice(WORDS, rng.integers(2, 40)))}
        for i in range(count)
    ]


def write(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def encode(
    tmp_path, tiny, name, records, reuse=None, options=OPTIONS, reading=None, docs=16, piece=128
):
    source = write(tmp_path / f"{name}.jsonl", records)
    engine = EmbedEngine(tiny, options)
    return process_file(
        EMBED, source, tmp_path / name, engine, reading=reading, shard_items=docs, reuse=reuse,
        piece_documents=piece,
    )  # fmt: skip


def rows(directory: Path) -> pa.Table:
    return pq.read_table(sorted(directory.glob("part-*.parquet")))


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    """Row for row: equal ids, tokens, sparse terms; vectors within the parity bound (copied
    rows were computed in other batches: GEMM blocking moves the last bits)."""
    assert got.column_names == want.column_names
    for name in got.column_names:
        if name == "colbert":
            field = got.schema.field(name)
            left, right = (
                colbert_rows(got.column(name), field),
                colbert_rows(want.column(name), field),
            )
        else:
            left, right = got.column(name).to_pylist(), want.column(name).to_pylist()
        if name in ("dense", "sparse_values"):
            for a, b in zip(left, right, strict=True):
                np.testing.assert_allclose(a, b, atol=1e-5)
        elif name == "colbert":
            for a, b in zip(left, right, strict=True):
                np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=1e-5)
        else:
            assert left == right, name


def edited(records: list[dict[str, str]]) -> list[dict[str, str]]:
    """Some changed, some gone, some new, some moved: what a re-index meets."""
    new = [dict(r) for r in records if r["id"] not in ("d003", "d040")]  # dropped
    for record in new[20:23]:
        record["text"] += " (edited)"
    new.insert(30, {"id": "fresh-1", "text": "a new document"})
    new.append({"id": "fresh-2", "text": "another new one"})
    new.insert(5, new.pop(len(new) - 3))  # moved to another shard, unchanged
    return new


def test_reuse_copies_unchanged_documents_and_equals_a_full_encode(tmp_path, tiny):
    records = corpus(60)
    encode(tmp_path, tiny, "v1", records)
    reused = encode(tmp_path, tiny, "v2", edited(records), reuse=tmp_path / "v1")
    full = encode(tmp_path, tiny, "full", edited(records))

    assert_same_rows(rows(tmp_path / "v2"), rows(tmp_path / "full"))
    # 60 - 2 dropped - 3 edited = 55 copied; 3 edited + 2 new encoded
    assert (reused.reused, reused.dropped) == (55, 2)
    counts = json.loads((tmp_path / "v2" / MANIFEST).read_text())["counts"]
    assert counts | {"reused": 55, "encoded": 5, "dropped": 2} == counts
    assert counts["documents"] == 60 and counts["rows"] == 60
    # Only the encoded documents cost tokens.
    assert 0 < reused.stats.tokens < full.stats.tokens / 5
    assert sum(entry["reused"] for entry in read_shard_log(tmp_path / "v2")) == 55


def test_reuse_of_a_reused_output_and_of_an_unchanged_corpus(tmp_path, tiny):
    records = corpus(40)
    encode(tmp_path, tiny, "v1", records)
    again = encode(tmp_path, tiny, "v2", records, reuse=tmp_path / "v1")
    assert (again.reused, again.dropped, again.stats.tokens) == (40, 0, 0)
    # Nothing encoded: the files are the previous rows, the digests carried on.
    assert rows(tmp_path / "v2").equals(rows(tmp_path / "v1"))
    third = encode(tmp_path, tiny, "v3", edited(records), reuse=tmp_path / "v2")
    assert (third.reused, third.dropped) == (36, 1)  # d003 gone (no d040 here), 3 edited


def as_output_format_1(directory: Path) -> None:
    """Rewrite an output's parts as m3pipe wrote them before format 2: colbert as
    list<fixed_size_list<float>>, no output_format in the metadata."""
    for part in directory.glob("part-*.parquet"):
        table = pq.read_table(part)
        index = table.schema.get_field_index("colbert")
        field = table.schema.field(index)
        offsets, vectors = colbert_vectors(table.column(index), field)
        old = pa.ListArray.from_arrays(
            pa.array(offsets.astype(np.int32)),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
        )
        table = table.set_column(index, pa.field("colbert", old.type, nullable=False), old)
        meta = dict(table.schema.metadata)
        described = json.loads(meta[b"m3pipe"])
        del described["output_format"]
        meta[b"m3pipe"] = json.dumps(described, sort_keys=True).encode()
        pq.write_table(table.replace_schema_metadata(meta), part, compression="zstd")


def test_an_output_of_the_earlier_format_is_reused(tmp_path, tiny):
    records = corpus(40)
    encode(tmp_path, tiny, "v1", records)
    as_output_format_1(tmp_path / "v1")
    assert pa.types.is_fixed_size_list(
        rows(tmp_path / "v1").schema.field("colbert").type.value_type
    )
    again = encode(tmp_path, tiny, "v2", edited(records), reuse=tmp_path / "v1")
    encode(tmp_path, tiny, "full", edited(records))
    assert again.reused == 36  # 40 - d003 dropped - 3 edited: old rows, in the new layout
    assert_same_rows(rows(tmp_path / "v2"), rows(tmp_path / "full"))


def test_chunked_documents_and_kept_fields(tmp_path, tiny):
    options = EncodeOptions(
        max_length=16, long_docs=LongDocPolicy.CHUNK, dtype=StorageDtype.FLOAT32
    )
    reading = Reading(keep_fields=("title",))
    records = [{**r, "title": f"t{i}"} for i, r in enumerate(corpus(30, seed=1))]
    encode(tmp_path, tiny, "v1", records, options=options, reading=reading, docs=7)
    changed = [dict(r) for r in records]
    changed[4]["title"] = "a new title"  # same text, another kept field: encoded again
    changed[9]["text"] += " and more words to make another chunk or two"
    summary = encode(tmp_path, tiny, "v2", changed, reuse=tmp_path / "v1", options=options,
                     reading=reading, docs=7)  # fmt: skip
    encode(tmp_path, tiny, "full", changed, options=options, reading=reading, docs=7)
    got = rows(tmp_path / "v2")
    assert max(got.column("chunk").to_pylist()) > 0  # chunk rows really were copied
    assert_same_rows(got, rows(tmp_path / "full"))
    assert summary.reused == 28


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"options": EncodeOptions(max_length=32, dtype=StorageDtype.FLOAT32)}, "max_length"),
        ({"options": EncodeOptions(max_length=64)}, "dtype"),
        ({"options": stored(colbert_storage="int8")}, "colbert_storage"),
        ({"options": stored(sparse_top_k=4)}, "sparse_top_k"),
        ({"reading": Reading(keep_fields=("title",))}, "kept fields"),
    ],
)
def test_an_output_of_other_options_is_refused(tmp_path, tiny, change, message):
    records = [{**r, "title": "t"} for r in corpus(5)]
    encode(tmp_path, tiny, "v1", records)
    with pytest.raises(ReuseError, match=message):
        encode(tmp_path, tiny, "v2", records, reuse=tmp_path / "v1", **change)
    assert not (tmp_path / "v2").exists()  # refused before anything was written


def test_a_compact_output_is_reused_by_a_job_stored_alike(tmp_path, tiny):
    """Scale columns travel with their vectors; the rows equal a full compact encode's."""
    options = stored(colbert_storage="int8", dense_storage="int8")
    records = corpus(30)
    encode(tmp_path, tiny, "v1", records, options=options)
    reused = encode(tmp_path, tiny, "v2", edited(records), reuse=tmp_path / "v1", options=options)
    full = encode(tmp_path, tiny, "full", edited(records), options=options)
    assert reused.reused == 26 and full.reused is None  # 30 - 1 dropped - 3 edited
    got, want = rows(tmp_path / "v2"), rows(tmp_path / "full")
    assert got.column_names == want.column_names
    assert {"colbert_scales", "dense_scale"} <= set(got.column_names)
    assert got.column("id").equals(want.column("id"))
    got_offsets, got_colbert = colbert_floats(got)
    want_offsets, want_colbert = colbert_floats(want)
    assert np.array_equal(got_offsets, want_offsets)
    # Copied rows were computed in other batches: a code may move by one step.
    np.testing.assert_allclose(got_colbert, want_colbert, atol=0.01)
    np.testing.assert_allclose(dense_floats(got), dense_floats(want), atol=0.01)


def test_what_is_not_a_reusable_output_is_refused(tmp_path, tiny):
    records = corpus(5)
    with pytest.raises(ReuseError, match=r"no _manifest\.json"):
        encode(tmp_path, tiny, "v2", records, reuse=tmp_path / "missing")
    encode(tmp_path, tiny, "v1", records)
    with pytest.raises(ReuseError, match="another output directory"):
        encode(tmp_path, tiny, "v1", records, reuse=tmp_path / "v1")
    (tmp_path / "v1" / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ReuseError, match="not an m3pipe manifest"):
        encode(tmp_path, tiny, "v3", records, reuse=tmp_path / "v1")


def test_a_linked_part_in_the_previous_output_is_refused(tmp_path, tiny):
    """A part that is a link (to anything, outside the roots too) is not m3pipe's file: the
    previous output is refused, and a link made after it was opened is not read."""
    records = corpus(20)
    encode(tmp_path, tiny, "v1", records)
    outside = tmp_path / "elsewhere.parquet"
    part = tmp_path / "v1" / "part-00001.parquet"
    part.rename(outside)
    part.symlink_to(outside)
    with pytest.raises(ReuseError, match=r"part-00001\.parquet is a link"):
        encode(tmp_path, tiny, "v2", records, reuse=tmp_path / "v1")
    with pytest.raises(ReuseError, match="is a link: not followed"):
        FinishedOutput.at(tmp_path / "v1").open_part(1)


def strip_digests(part: Path) -> None:
    table = pq.read_table(part)
    metadata = {k: v for k, v in table.schema.metadata.items() if k != DOCUMENT_DIGESTS_KEY}
    pq.write_table(table.replace_schema_metadata(metadata), part)


def test_unreadable_previous_parts_are_encoded_again(tmp_path, tiny):
    records = corpus(48)
    encode(tmp_path, tiny, "v1", records)
    strip_digests(tmp_path / "v1" / "part-00000.parquet")  # as an older m3pipe wrote it
    (tmp_path / "v1" / "part-00001.parquet").write_bytes(b"PAR1 garbage")
    summary = encode(tmp_path, tiny, "v2", records, reuse=tmp_path / "v1")
    encode(tmp_path, tiny, "full", records)
    assert summary.reused == 16  # the third part only
    assert_same_rows(rows(tmp_path / "v2"), rows(tmp_path / "full"))


def compute_with_reuse(engine, docs, runs, previous, piece=4) -> tuple[pa.Table, int]:
    """A shard's rows as a worker makes them under --reuse, piece by piece (pieces of about
    `piece` documents: runs cross pieces), and the documents copied."""
    schema = EMBED.compute(engine, [], ()).table.schema
    stream = ReuseStream(
        ShardReuse(docs, runs, previous, engine, schema), EMBED.pieces(docs, piece)
    )
    computed = EMBED.compute_stream(engine, stream.to_compute())
    tables = [stream.merged(result.table) for _, result in computed]
    return pa.concat_tables(tables), stream.reused


@pytest.fixture
def previous(tmp_path, tiny) -> FinishedOutput:
    encode(tmp_path, tiny, "v1", corpus(20), docs=10)
    return FinishedOutput.at(tmp_path / "v1")


def docs_of(records: list[dict[str, str]]) -> list[Document]:
    return [Document(id=r["id"], text=r["text"]) for r in records]


@pytest.mark.parametrize(
    "runs",
    [
        [ReuseRun(at=0, count=5, part=0, row=1, rows=5)],  # rows of other documents
        [ReuseRun(at=0, count=5, part=0, row=0, rows=6)],  # more rows than its documents
        [ReuseRun(at=0, count=5, part=7, row=0, rows=5)],  # no such part
        [ReuseRun(at=0, count=5, part=1, row=0, rows=5)],  # another part's documents
        [ReuseRun(at=0, count=20, part=0, row=0, rows=20)],  # past the part's end
    ],
)
def test_a_forged_or_outdated_plan_only_makes_the_worker_encode(previous, tiny, runs):
    engine = EmbedEngine(tiny, OPTIONS)
    docs = docs_of(corpus(10))
    table, reused = compute_with_reuse(engine, docs, runs, previous)
    assert reused == 0
    assert_same_rows(table, EMBED.compute(engine, docs).table)


def test_a_changed_text_under_the_same_id_is_encoded(previous, tiny):
    engine = EmbedEngine(tiny, OPTIONS)
    docs = docs_of(corpus(10))
    docs[2] = Document(id=docs[2].id, text="changed after the plan was made")
    runs = [ReuseRun(at=0, count=10, part=0, row=0, rows=10)]
    table, reused = compute_with_reuse(engine, docs, runs, previous)
    assert reused == 0  # the run fails as a whole: its rows are checked together
    assert_same_rows(table, EMBED.compute(engine, docs).table)
    runs = [ReuseRun(at=0, count=2, part=0, row=0, rows=2),
            ReuseRun(at=3, count=7, part=0, row=3, rows=7)]  # fmt: skip
    table, reused = compute_with_reuse(engine, docs, runs, previous)
    assert reused == 9
    assert_same_rows(table, EMBED.compute(engine, docs).table)


def test_rows_of_another_model_are_never_copied(previous, tiny):
    part = previous.location.local_path / "part-00000.parquet"
    table = pq.read_table(part)
    model = json.loads(table.schema.metadata[b"m3pipe"])
    model["model_fingerprint"] = "another-model"
    metadata = {**table.schema.metadata, b"m3pipe": json.dumps(model).encode()}
    pq.write_table(table.replace_schema_metadata(metadata), part)
    engine = EmbedEngine(tiny, OPTIONS)
    docs = docs_of(corpus(10))
    runs = [ReuseRun(at=0, count=10, part=0, row=0, rows=10)]
    table, reused = compute_with_reuse(engine, docs, runs, previous)
    assert reused == 0
    assert_same_rows(table, EMBED.compute(engine, docs).table)


class HeldRows:
    """Watches every previous part file a test opens: how many are open at once, how often
    each row is decoded, and how many files hold decoded rows at once."""

    def __init__(self, monkeypatch) -> None:
        from pipeline.storage import finished_output

        self.open: list[finished_output.PartFile] = []
        self.most_open = self.most_held = 0
        self.decoded: collections.Counter[tuple[int, int]] = collections.Counter()
        real_open, real_rows = FinishedOutput.open_part, finished_output.PartFile.rows
        real_close = finished_output.PartFile.close
        real_batches = pq.ParquetFile.iter_batches

        def open_part(output, number):
            part = real_open(output, number)
            self.open.append(part)
            self.most_open = max(self.most_open, len(self.open))
            return part

        def close(part):
            self.open.remove(part)
            real_close(part)

        def rows(part, start, stop, columns):
            table = real_rows(part, start, stop, columns)
            held = sum(other._cursor is not None for other in self.open)
            self.most_held = max(self.most_held, held)
            return table

        def iter_batches(handle, *args, row_groups, **kwargs):
            part = next(part for part in self.open if part._handle is handle)
            row = int(part._group_starts[row_groups[0]])
            for batch in real_batches(handle, *args, row_groups=row_groups, **kwargs):
                for offset in range(batch.num_rows):
                    self.decoded[part.index.number, row + offset] += 1
                row += batch.num_rows
                yield batch

        monkeypatch.setattr(FinishedOutput, "open_part", open_part)
        monkeypatch.setattr(finished_output.PartFile, "close", close)
        monkeypatch.setattr(finished_output.PartFile, "rows", rows)
        monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)


def test_a_worker_copies_and_writes_a_shard_piece_by_piece(tmp_path, store, runtime, tiny,
                                                          monkeypatch):  # fmt: skip
    """A shard with reuse runs goes through the worker's streamed path: its part is written
    a piece at a time (a row group each), the previous part's rows are decoded a few at a
    time, each once when the corpus keeps its order, by one file at once, and every file
    opened is closed."""
    runtime.piece_documents = 8
    records = corpus(48)
    queue_job(tmp_path, store, runtime, "v1", records)
    assert pq.ParquetFile(tmp_path / "v1" / "part-00000.parquet").num_row_groups > 2
    runtime.piece_documents = 4  # smaller pieces now: two read from one row group
    changed = [dict(r) for r in records]
    for record in changed[5:7] + changed[30:31]:
        record["text"] += " (edited)"
    held = HeldRows(monkeypatch)
    result, _ = queue_job(tmp_path, store, runtime, "v2", changed, reuse=str(tmp_path / "v1"))
    assert result.reuse == (45, 0)
    assert len(held.decoded) >= 45 and set(held.decoded.values()) == {1}
    assert held.most_held == 1 and held.open == []
    assert pq.ParquetFile(tmp_path / "v2" / "part-00000.parquet").num_row_groups > 3
    encode(tmp_path, tiny, "full", changed)
    assert_same_rows(rows(tmp_path / "v2"), rows(tmp_path / "full"))


def test_a_shard_drawn_from_many_previous_parts_keeps_few_open(tmp_path, tiny, monkeypatch):
    """A reordered corpus: each document of a shard from another previous part, in turn.
    At most OPEN_PARTS files are open at once, one of them holding decoded rows; a part
    opened again is checked again."""
    from pipeline.tasks.reuse import OPEN_PARTS

    records = corpus(24)
    encode(tmp_path, tiny, "v1", records, docs=2)  # twelve parts
    shuffled = records[0::2] + records[1::2]  # neighbours from different parts
    held = HeldRows(monkeypatch)
    summary = encode(tmp_path, tiny, "v2", shuffled, reuse=tmp_path / "v1", docs=24)
    assert summary.reused == 24
    assert held.most_open == OPEN_PARTS and held.open == [] and held.most_held == 1
    assert max(held.decoded.values()) > 1  # parts read again after they were closed
    encode(tmp_path, tiny, "full", shuffled, docs=24)
    assert_same_rows(rows(tmp_path / "v2"), rows(tmp_path / "full"))


@pytest.mark.parametrize("failure", ["unreadable", "other rows"])
def test_rows_that_cannot_be_read_or_are_not_the_documents_are_encoded(
    previous, tiny, monkeypatch, failure
):
    """A read that fails (a damaged row group) or that returns other documents' rows (an
    object replaced between two reads) makes the worker encode those documents."""
    from pipeline.storage import finished_output

    real_rows = finished_output.PartFile.rows

    def rows_of_part(part, start, stop, columns):
        if start >= 4:
            if failure == "unreadable":
                raise OSError("damaged row group")
            return real_rows(part, start - 1, stop - 1, columns)
        return real_rows(part, start, stop, columns)

    monkeypatch.setattr(finished_output.PartFile, "rows", rows_of_part)
    engine = EmbedEngine(tiny, OPTIONS)
    docs = docs_of(corpus(10))
    runs = [ReuseRun(at=0, count=10, part=0, row=0, rows=10)]
    table, reused = compute_with_reuse(engine, docs, runs, previous)
    assert 0 < reused < 10  # the pieces before the failure are copied
    assert_same_rows(table, EMBED.compute(engine, docs).table)


def test_a_previous_part_that_ends_before_its_metadata_says_is_encoded(previous, tiny, monkeypatch):
    """The rows a part's footer promises are not all there: the read is an error, and the
    documents it would have copied are encoded."""
    real_batches = pq.ParquetFile.iter_batches

    def first_batch_only(handle, *args, **kwargs):
        yield from itertools.islice(real_batches(handle, *args, **kwargs), 1)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", first_batch_only)
    monkeypatch.setattr("pipeline.storage.finished_output.COPY_BATCH_ROWS", 3)
    engine = EmbedEngine(tiny, OPTIONS)
    docs = docs_of(corpus(10))
    runs = [ReuseRun(at=0, count=10, part=0, row=0, rows=10)]
    table, reused = compute_with_reuse(engine, docs, runs, previous)
    assert 0 < reused < 10  # the first batch's rows are copied, the rest encoded
    assert_same_rows(table, EMBED.compute(engine, docs).table)


def test_a_repeated_id_in_a_shard_never_shifts_rows(previous, tiny):
    """A forged shard whose two encoded documents share an id: rows stay in the shard's
    document order (a piece's documents are told apart by position, not by id)."""
    engine = EmbedEngine(tiny, OPTIONS)
    docs = docs_of(corpus(10))
    docs[5] = Document(id=docs[4].id, text="another text under the same id")
    runs = [ReuseRun(at=0, count=4, part=0, row=0, rows=4),
            ReuseRun(at=6, count=4, part=0, row=6, rows=4)]  # fmt: skip
    table, reused = compute_with_reuse(engine, docs, runs, previous, piece=8)
    assert reused == 8
    assert_same_rows(table, EMBED.compute(engine, docs).table)


def test_encode_copies_shards_of_many_pieces_and_ends_each_part_with_its_shard(tmp_path, tiny):
    """`m3pipe encode --reuse` with shards of several pieces: each piece's copies merged in
    its place, and each part holds exactly its shard (shards of 16 in pieces of 4)."""
    records = corpus(40)
    encode(tmp_path, tiny, "v1", records)
    changed = [dict(r) for r in records]
    for record in changed[1:2] + changed[9:10] + changed[21:23]:
        record["text"] += " (edited)"
    summary = encode(tmp_path, tiny, "v2", changed, reuse=tmp_path / "v1", piece=4)
    assert (summary.parts, summary.reused) == (3, 36)
    for number, documents in enumerate((16, 16, 8)):
        part = pq.ParquetFile(tmp_path / "v2" / f"part-{number:05d}.parquet")
        assert part.metadata.num_rows == documents and part.num_row_groups > 1
    encode(tmp_path, tiny, "full", changed)
    assert_same_rows(rows(tmp_path / "v2"), rows(tmp_path / "full"))


@settings(max_examples=40, deadline=None)
@given(
    groups=st.lists(st.integers(1, 7), min_size=1, max_size=6),
    requests=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 9)), min_size=1, max_size=12),
)
def test_a_part_file_returns_exactly_the_rows_asked_in_any_order(groups, requests):
    """Any sequence of row ranges, forward, backward, within and across row groups: each
    read returns exactly those rows (the cursor seeks back, or ahead past whole groups)."""
    total = sum(groups)
    docs = [Document(id=f"d{i}", text=f"text {i}") for i in range(total)]
    table = pa.table({"id": [doc.id for doc in docs], "n": list(range(total))})
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "part-00000.parquet"
        schema = with_document_digests(table, docs).schema
        with pq.ParquetWriter(path, schema) as writer:
            at = 0
            for size in groups:  # a row group each
                writer.write_table(table.slice(at, size).replace_schema_metadata(schema.metadata))
                at += size
        part = FinishedOutput.at(directory).open_part(0)
        try:
            assert part.index.ids == [doc.id for doc in docs]
            for fraction, length in requests:
                start = min(int(fraction * total), total)
                stop = min(start + length, total)
                got = part.rows(start, stop, ["id", "n"])
                assert got.column("n").to_pylist() == list(range(start, stop))
        finally:
            part.close()


def test_the_index_plans_runs_and_counts(tmp_path, tiny):
    records = corpus(30)
    encode(tmp_path, tiny, "v1", records, docs=10)
    with ReuseIndex(FinishedOutput.open(tmp_path / "v1")) as index:
        assert index.indexed == 30
        docs = docs_of(records[5:15])  # across two parts: two runs
        docs[3] = Document(id=docs[3].id, text="changed")
        assert index.plan(docs) == [
            ReuseRun(at=0, count=3, part=0, row=5, rows=3),
            ReuseRun(at=4, count=1, part=0, row=9, rows=1),
            ReuseRun(at=5, count=5, part=1, row=0, rows=5),
        ]
        assert index.plan(docs_of([{"id": "new", "text": "x"}, records[29]])) == [
            ReuseRun(at=1, count=1, part=2, row=9, rows=1)
        ]
        assert (index.matched, index.reused, index.dropped) == (11, 10, 19)
        directory = index._scratch.directory
        assert directory.exists()
    assert not directory.exists()  # the on-disk index goes with the job


def test_the_digest_covers_text_and_kept_fields_only():
    doc = Document(id="a", text="x", fields={"k": "1", "other": "2"})
    assert document_digest(doc) == document_digest(Document(id="b", text="x"))
    assert document_digest(doc, ["k"]) != document_digest(doc)
    assert document_digest(doc, ["k"]) == document_digest(
        Document(id="a", text="x", fields={"k": "1", "other": "changed"}), ["k"]
    )
    none = Document(id="a", text="x", fields={"k": None})
    empty = Document(id="a", text="x", fields={"k": ""})
    assert document_digest(none, ["k"]) != document_digest(empty, ["k"])


def test_every_part_records_one_digest_per_document(tmp_path, tiny):
    options = EncodeOptions(max_length=16, long_docs=LongDocPolicy.CHUNK)
    records = corpus(12)
    encode(tmp_path, tiny, "v1", records, options=options, docs=12)
    table = pq.read_table(tmp_path / "v1" / "part-00000.parquet")
    assert table.num_rows > 12
    packed = base64.b64decode(table.schema.metadata[DOCUMENT_DIGESTS_KEY])
    assert packed == b"".join(document_digest(d) for d in docs_of(records))


# -- queue jobs: the producer plans, the worker copies (real Redis, in-process runner) -----


@pytest.fixture
def runtime(store, tiny):
    from pipeline.runtime.worker_models import WorkerModels
    from pipeline.runtime.worker_runtime import WorkerRuntime

    models = WorkerModels(specs={Task.EMBED: "random:tiny"}, loader=lambda task, spec: tiny)
    return WorkerRuntime(models=models, store=store, hostname="t@host")


def queue_job(tmp_path, store, runtime, name, records, run=True, **changes):
    from pipeline.runtime.shard_runner import run_shard
    from producers.submit import ShardLimits, SubmitRequest, submit_job

    fields = dict(
        inputs=[write(tmp_path / f"{name}.jsonl", records)], out=tmp_path / name,
        model="random:tiny", options=OPTIONS, queue="q", max_queued=100,
        limits=ShardLimits(items=16, bytes=1 << 20, tokens=100_000),
    )  # fmt: skip
    sent = []
    request = SubmitRequest(**(fields | changes))
    result = submit_job(request, store, lambda message, queue, priority: sent.append(message))
    for message in sent if run else ():
        run_shard(message, runtime)
    return result, sent


def test_a_queue_job_reuses_and_counts_in_its_manifest(tmp_path, store, runtime, tiny):
    records = corpus(60)
    queue_job(tmp_path, store, runtime, "v1", records)
    result, sent = queue_job(tmp_path, store, runtime, "v2", edited(records),
                             reuse=str(tmp_path / "v1"))  # fmt: skip
    assert result.reuse == (55, 2)
    # A run per stretch of unchanged documents: shard 0 has a deletion, a moved document
    # and its neighbours. Bytes per shard in Redis, not per document.
    assert [len(m.reuse or ()) for m in sent] == [4, 2, 3, 2]
    assert all(len(m.model_dump_json()) < 800 for m in sent)  # shards by reference
    status = store.status(result.job_id)
    assert (status.documents_reused, status.documents_dropped) == (55, 2)
    manifest = json.loads((tmp_path / "v2" / MANIFEST).read_text())
    assert manifest["job"]["reuse"] == str(tmp_path / "v1")
    counts = manifest["counts"]
    assert (counts["reused"], counts["encoded"], counts["dropped"]) == (55, 5, 2)
    encode(tmp_path, tiny, "full", edited(records))
    assert_same_rows(rows(tmp_path / "v2"), rows(tmp_path / "full"))


def test_a_compact_queue_job_stores_as_asked_and_reuses_alike(tmp_path, store, runtime, tiny):
    """--storage travels in the job's messages: a worker stores each shard compact, the
    manifest says so, and a compact job reuses the compact output (not an exact one)."""
    options = stored(dense_storage="int8", colbert_storage="binary", sparse_top_k=5)
    records = corpus(40)
    queue_job(tmp_path, store, runtime, "v1", records, options=options)
    table = rows(tmp_path / "v1")
    assert table.num_rows == 40 and "dense_scale" in table.column_names
    assert max(len(t) for t in table.column("sparse_indices").to_pylist()) == 5
    assert table.schema.field("colbert").metadata[b"m3pipe.vector"].startswith(b"binary")
    manifest = json.loads((tmp_path / "v1" / MANIFEST).read_text())
    assert manifest["model"]["storage"] == options.storage()
    result, _ = queue_job(tmp_path, store, runtime, "v2", edited(records), options=options,
                          reuse=str(tmp_path / "v1"))  # fmt: skip
    assert result.reuse == (36, 1)  # 40 - 1 dropped (d040 is not among 40) - 3 edited
    encode(tmp_path, tiny, "full", edited(records), options=options)
    got, want = rows(tmp_path / "v2"), rows(tmp_path / "full")
    assert got.column("id").equals(want.column("id"))
    np.testing.assert_allclose(dense_floats(got), dense_floats(want), atol=0.01)


def test_submit_refuses_an_output_of_other_options_before_registering(tmp_path, store, runtime):
    records = corpus(8)
    queue_job(tmp_path, store, runtime, "v1", records)
    jobs = store.job_ids()
    with pytest.raises(ReuseError, match="max_length 32"):
        queue_job(tmp_path, store, runtime, "v2", records, reuse=str(tmp_path / "v1"),
                  options=EncodeOptions(max_length=32, dtype=StorageDtype.FLOAT32))  # fmt: skip
    with pytest.raises(ReuseError, match="model 'random:small'"):
        queue_job(tmp_path, store, runtime, "v2", records, reuse=str(tmp_path / "v1"),
                  model="random:small")  # fmt: skip
    assert store.job_ids() == jobs and not (tmp_path / "v2").exists()


def test_workers_read_a_previous_output_only_below_their_roots(tmp_path, store, runtime):
    records = corpus(8)
    queue_job(tmp_path, store, runtime, "v1", records)
    runtime.input_roots = (str(tmp_path / "elsewhere"),)
    runtime.output_roots = (str(tmp_path / "v2"),)
    _, sent = queue_job(tmp_path, store, runtime, "v2", records, run=False,
                        reuse=str(tmp_path / "v1"), inline_shards=True)  # fmt: skip
    with pytest.raises(InputNotAllowed, match="outside the allowed input roots"):
        run_shard(sent[0], runtime)
    runtime.output_roots = (str(tmp_path),)  # below an output root: read, rows copied
    run_shard(sent[0], runtime)
    assert store.status(sent[0].job_id).documents_reused == 8
