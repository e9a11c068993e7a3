import pytest
from pydantic import ValidationError

from pipeline.engine import Engine
from pipeline.tokenize import chunk_starts, tokenize_texts
from schemas.options import EncodeOptions
from tests.corpus import documents, mixed_texts


def test_chunk_starts_cover_everything_with_overlap():
    assert chunk_starts(0, 10, 0) == [0]
    assert chunk_starts(10, 10, 0) == [0]
    assert chunk_starts(11, 10, 0) == [0, 10]
    assert chunk_starts(25, 10, 4) == [0, 6, 12, 18]
    for n in range(1, 60):
        starts = chunk_starts(n, 10, 3)
        covered = set()
        for s in starts:
            covered.update(range(s, min(s + 10, n)))
        assert covered == set(range(n))


def test_truncation_matches_hf_tokenizer(tiny):
    texts = mixed_texts()
    options = EncodeOptions(max_length=300)
    shard = tokenize_texts(tiny.tokenizer, texts, options, tiny.cls_id, tiny.eos_id)
    reference = tiny.tokenizer(texts, truncation=True, max_length=300)["input_ids"]
    assert shard.ids == reference
    full = [len(x) for x in tiny.tokenizer(texts)["input_ids"]]
    assert shard.truncated.tolist() == [n > 300 for n in full]


def test_chunk_mode_rows_and_windows(tiny):
    texts = mixed_texts()
    options = EncodeOptions(max_length=128, long_docs="chunk", chunk_overlap=16)
    result = Engine(tiny, options).encode(documents(texts))
    table = result.table
    assert table.column_names[:2] == ["id", "chunk"]
    ids, chunks = table.column("id").to_pylist(), table.column("chunk").to_pylist()
    content = tiny.tokenizer(texts, add_special_tokens=False)["input_ids"]
    for i, tokens in enumerate(content):
        mine = [c for d, c in zip(ids, chunks, strict=True) if d == f"doc-{i}"]
        assert mine == list(range(len(chunk_starts(len(tokens), 126, 16))))
    assert max(table.column("n_tokens").to_pylist()) <= 128
    assert not any(table.column("truncated").to_pylist())
    assert len(table.column("colbert")[0]) == table.column("n_tokens")[0].as_py() - 1


def test_overlap_must_fit_the_window():
    with pytest.raises(ValidationError, match="chunk_overlap"):
        EncodeOptions(max_length=64, long_docs="chunk", chunk_overlap=62)
    with pytest.raises(ValidationError):
        EncodeOptions(max_length=9000)
    with pytest.raises(ValidationError):
        EncodeOptions(modes="dense,bogus")
