"""Plain JSONL read as columns holds what `read_jsonl` reads: the same documents (ids,
places, sizes, digests) and the same rejects, in the same order."""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import InputError
from pipeline.inputs.intake import document_bytes
from pipeline.inputs.readers.jsonl import read_jsonl
from pipeline.inputs.readers.jsonl_columns import DIGEST_BYTES, DocumentColumns, read_columns
from pipeline.inputs.readers.lines import read_line_blocks
from pipeline.inputs.validate import DocumentShape
from pipeline.jobs.resume import item_digest
from schemas.document import Document
from tests.pipeline.inputs.jsonl_lines import jsonl_files, write_inputs

Row = tuple[str, int, int, int, int, bytes]  # id, line, start, end, bytes, digest


def by_read_jsonl(paths, shape, max_record_bytes) -> tuple[list[Row], list[tuple[int, str]]]:
    docs: list[Row] = []
    rejects: list[tuple[int, str]] = []
    for path in paths:
        for item in read_jsonl(path, shape=shape, max_record_bytes=max_record_bytes):
            result = item.result
            if isinstance(result, Document):
                assert result.origin is not None
                _, line, start, end = result.origin
                size, digest = document_bytes(result), item_digest(result)
                docs.append((result.id, line, start, end, size, digest))
            else:
                rejects.append((len(docs), result.model_dump_json()))
    return docs, rejects


def flatten(blocks: list[DocumentColumns]) -> tuple[list[Row], list[tuple[int, str]]]:
    docs: list[Row] = []
    rejects: list[tuple[int, str]] = []
    for block in blocks:
        rejects += [(len(docs) + at, reject.model_dump_json()) for at, reject in block.rejects]
        for k, doc_id in enumerate(block.ids):
            digest = block.digests[k * DIGEST_BYTES : (k + 1) * DIGEST_BYTES]
            place = (block.lines[k], block.starts[k], block.ends[k])
            docs.append((doc_id, *place, block.sizes[k], digest))
    return docs, rejects


@settings(max_examples=80, deadline=None)
@given(
    files=jsonl_files,
    keep=st.booleans(),
    block_bytes=st.sampled_from([64, 300, 1 << 20]),
    max_record_bytes=st.sampled_from([150, 1000, 8 << 20]),
)
def test_columns_hold_what_read_jsonl_reads(
    tmp_path_factory, files, keep, block_bytes, max_record_bytes
):
    paths = write_inputs(tmp_path_factory.mktemp("columns"), files)
    shape = DocumentShape(keep_fields=("lang",) if keep else ())
    with mock.patch("pipeline.inputs.readers.jsonl.BLOCK_BYTES", block_bytes):
        blocks = list(read_columns(paths, shape, max_record_bytes))
        assert flatten(blocks) == by_read_jsonl(paths, shape, max_record_bytes)
    assert all(block.source == str(block.source) for block in blocks)


def test_inputs_that_fail_read_jsonl_fail_columns_alike(tmp_path):
    with pytest.raises(InputError, match="not found"):
        list(read_columns([tmp_path / "missing.jsonl"], DocumentShape(), 100))
    with pytest.raises(InputError, match="directory"):
        list(read_columns([tmp_path], DocumentShape(), 100))


def test_a_read_failing_partway_is_one_reject_after_what_was_read(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(b'{"id": "d%d", "text": "t"}\n' % i for i in range(50)))
    real = read_line_blocks

    def failing(handle, max_bytes, **kwargs):
        yield next(real(handle, max_bytes, **kwargs))
        raise OSError(5, "Input/output error")

    with (
        mock.patch("pipeline.inputs.readers.jsonl.read_line_blocks", failing),
        mock.patch("pipeline.inputs.readers.jsonl.BLOCK_BYTES", 100),
    ):
        blocks = list(read_columns([path], DocumentShape(), 1000))
    assert [len(block.ids) for block in blocks] == [3, 0]
    ((at, reject),) = blocks[1].rejects
    assert at == 0 and reject.line == 4
    assert reject.reason.startswith("read failed at line 4, the rest of the file is lost")
