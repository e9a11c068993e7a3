from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.engine.embedder import EmbedEngine
from pipeline.engine.tokenize import chunk_starts, tokenize_texts
from pipeline.testing.corpora import documents, mixed_texts
from schemas.options import EncodeOptions


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
    result = EmbedEngine(tiny, options).encode(documents(texts))
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


# Long texts are tokenized by pieces (pipeline/engine/tokenize.py); the tokens must be the whole
# text's. The pieces are made small here so that every cut lands in the test texts.
WORDS = ["alpha", "be", "gamma", "δέλτα", "東京", "x", "ﬁ", "naïve", "\n", "  ", "\u00a0", "9.5"]


def _long_text(seed: int, n_words: int) -> str:
    import random

    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + rng.choice(["", "", "s", "-", "."]) for _ in range(n_words))


@pytest.mark.parametrize("seed", range(6))
def test_pieces_give_the_whole_texts_tokens(tiny, seed):
    from pipeline.engine.tokenize import all_tokens, leading_tokens, tokenize_plain

    text = _long_text(seed, 3000)
    whole = tokenize_plain(tiny.tokenizer, [text])[0]
    assert all_tokens(tiny.tokenizer, text, 500).tolist() == whole
    for count in (1, 37, 800, len(whole) - 1, len(whole), len(whole) + 5):
        assert leading_tokens(tiny.tokenizer, text, count, 300) == whole[:count]


def _spy_on_the_tokenizer(tokenizer, monkeypatch) -> list[int]:
    """The lengths of the texts `tokenizer` is handed from now on, through its wrapper or
    its Rust backend."""
    import pipeline.engine.tokenize as tokenize

    seen: list[int] = []
    real_call, real_backend = tokenizer.__class__.__call__, tokenize._rust_backend

    def call(self, text, *args, **kwargs):
        seen.extend(len(t) for t in ([text] if isinstance(text, str) else text))
        return real_call(self, text, *args, **kwargs)

    class Backend:
        def __init__(self, backend):
            self.backend = backend

        def encode_batch(self, texts, **kwargs):
            seen.extend(len(t) for t in texts)
            return self.backend.encode_batch(texts, **kwargs)

        def encode_batch_fast(self, texts, **kwargs):
            seen.extend(len(t) for t in texts)
            return self.backend.encode_batch_fast(texts, **kwargs)

    def backend(of):
        found = real_backend(of)
        return None if found is None else Backend(found)

    monkeypatch.setattr(tokenizer.__class__, "__call__", call)
    monkeypatch.setattr(tokenize, "_rust_backend", backend)
    return seen


def test_truncation_at_the_window_edge_tokenizes_only_a_prefix(tiny, monkeypatch):
    """A text of exactly window, window + 1 and far more tokens: the same ids and flags as
    the whole-text tokenization, while the tokenizer never sees more than a prefix."""
    import pipeline.engine.tokenize as tokenize

    options = EncodeOptions(max_length=130)
    window = 128
    base = _long_text(7, 20_000)
    whole = tokenize.tokenize_plain(tiny.tokenizer, [base])[0]
    # cut the text right after the token that ends the window, and one token later
    offsets = tiny.tokenizer(base, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    exact = base[: offsets[window - 1][1]]
    one_more = base[: offsets[window][1]]
    texts = [exact, one_more, base]
    seen = _spy_on_the_tokenizer(tiny.tokenizer, monkeypatch)
    monkeypatch.setattr(tokenize, "_MIN_PIECE_CHARS", 64)
    shard = tokenize_texts(tiny.tokenizer, texts, options, tiny.cls_id, tiny.eos_id)
    monkeypatch.undo()
    reference = tiny.tokenizer(texts, truncation=True, max_length=130)["input_ids"]
    assert [list(ids) for ids in shard.ids] == reference
    assert shard.truncated.tolist() == [False, True, True]
    assert len(whole) > 10 * window
    assert max(seen) < len(base) // 10  # the long text was never tokenized whole


def test_a_giant_word_is_truncated_from_a_prefix_with_the_same_tokens(tiny):
    """No space to cut at: the prefix is cut inside the word and its tail's tokens dropped."""
    import random

    from pipeline.engine.tokenize import leading_tokens, tokenize_plain

    rng = random.Random(1)
    text = "".join(rng.choice("abcdefghij東京δέ.-") for _ in range(60_000))
    whole = tokenize_plain(tiny.tokenizer, [text])[0]
    for count in (10, 1000, 5000):
        assert leading_tokens(tiny.tokenizer, text, count, 16_384) == whole[:count]


# Words, spaces of several kinds and runs of them, scripts, marks: where a prefix is cut.
_SEPARATORS = [" ", " ", " ", "  ", "   ", "\n", " \n ", "\t", "\u00a0", " \u3000 "]


@settings(max_examples=40, deadline=None)
@given(
    words=st.lists(
        st.sampled_from([*WORDS, "e\u0301", "ǅ", "①", "ﾃｽﾄ", "😀x"]), min_size=1, max_size=400
    ),
    separators=st.lists(st.sampled_from(_SEPARATORS), min_size=1, max_size=400),
    max_length=st.integers(8, 40),
    lead=st.sampled_from(["", " ", "  "]),
)
def test_a_text_truncated_from_its_prefix_has_the_whole_texts_tokens(
    fresh_tokenizer, words, separators, max_length, lead
):
    """Texts long enough for the prefix path at a small window: the same ids and flags as
    the tokenizer's own truncation of the whole text."""
    text = lead + "".join(w + separators[i % len(separators)] for i, w in enumerate(words))
    options = EncodeOptions(max_length=max_length)
    shard = tokenize_texts(fresh_tokenizer, [text], options, 0, 2)
    whole = fresh_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert list(shard.ids[0]) == [0, *whole[: max_length - 2], 2]
    assert shard.truncated.tolist() == [len(whole) > max_length - 2]


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.sampled_from([*WORDS, "e\u0301", "①", "😀x"]), min_size=1, max_size=200),
    separators=st.lists(st.sampled_from(_SEPARATORS), min_size=1, max_size=50),
    chars=st.integers(1, 1500),
    count=st.integers(1, 300),
)
def test_a_prefix_gives_the_whole_texts_leading_tokens_or_none(
    fresh_tokenizer, words, separators, chars, count
):
    """Wherever the prefix ends (inside a word, in a run of spaces), the tokens it gives are
    the whole text's first ones."""
    from pipeline.engine.tokenize import prefix_tokens, tokenize_plain

    text = "".join(w + separators[i % len(separators)] for i, w in enumerate(words))
    [found] = prefix_tokens(fresh_tokenizer, [text], count, chars)
    if found is not None:
        assert found == tokenize_plain(fresh_tokenizer, [text])[0][:count]


def test_prefix_tokens_gives_none_where_the_prefix_is_short_of_the_window(fresh_tokenizer):
    from pipeline.engine.tokenize import prefix_tokens, tokenize_plain

    spaced, unspaced = " ".join(["alpha"] * 200), "alpha" * 200
    # 60 characters: ten words and the space after the tenth, where the prefix is cut
    ten_words = tokenize_plain(fresh_tokenizer, [" ".join(["alpha"] * 10)])[0]
    count = len(ten_words)
    found = prefix_tokens(fresh_tokenizer, [spaced, unspaced, spaced], count, 60)
    assert found[0] == ten_words == found[2] == tokenize_plain(fresh_tokenizer, [spaced])[0][:count]
    assert found[1] is None  # no space in the prefix: the text is not cut there
    assert prefix_tokens(fresh_tokenizer, [spaced], count + 1, 60) == [None]


def test_a_512_token_window_tokenizes_3_kb_of_a_long_text(tiny, monkeypatch):
    """At bge-m3's usual truncation, a long document costs a prefix of ~6 characters a
    kept token, not its length; a text under twice that is tokenized whole."""
    long_text = _long_text(3, 20_000)
    medium = long_text[: 5 * 511]
    seen = _spy_on_the_tokenizer(tiny.tokenizer, monkeypatch)
    shard = tokenize_texts(tiny.tokenizer, [long_text, medium], EncodeOptions(max_length=512), 0, 2)
    monkeypatch.undo()
    assert sorted(seen) == [len(medium), 511 * 6]
    reference = tiny.tokenizer([long_text, medium], truncation=True, max_length=512)
    assert [list(ids[1:-1]) for ids in shard.ids] == [ids[1:-1] for ids in reference["input_ids"]]


@pytest.fixture(scope="module")
def fresh_tokenizer(tiny):
    """The tiny model's tokenizer as loaded, in no state another test's call left it in (a
    wrapper's call with truncation leaves its backend truncating)."""
    from pipeline.engine.model import load_tokenizer

    return load_tokenizer(Path(tiny.path))


@settings(max_examples=30, deadline=None)
@given(texts=st.lists(st.text(max_size=300), min_size=1, max_size=8))
def test_the_rust_backend_gives_the_ids_the_wrapper_gives(fresh_tokenizer, texts):
    from pipeline.engine import tokenize

    assert tokenize._rust_backend(fresh_tokenizer) is not None  # the fast path is taken
    assert tokenize.tokenize_plain(fresh_tokenizer, texts) == tokenize._wrapped_tokens(
        fresh_tokenizer, texts
    )


def test_a_backend_left_truncating_is_not_called_alone(tiny):
    """A wrapper call that truncates leaves truncation set on the backend."""
    from pipeline.engine import tokenize

    text = " ".join(["word"] * 50)
    tiny.tokenizer([text], truncation=True, max_length=8)
    assert tiny.tokenizer.backend_tokenizer.truncation is not None
    assert len(tokenize.tokenize_plain(tiny.tokenizer, [text])[0]) > 8  # the wrapper's ids
    tiny.tokenizer([text])  # the wrapper clears it again; the fast path is back
    assert tokenize._rust_backend(tiny.tokenizer) is not None


def test_a_backend_that_disagrees_with_its_wrapper_is_not_used():
    from pipeline.engine import tokenize

    class Encoding:
        def __init__(self, ids):
            self.ids = ids

    class Backend:
        truncation = padding = None

        def encode_batch(self, texts, add_special_tokens):
            return [Encoding([1, 2]) for _ in texts]

    class Wrapper:  # what a tokenizer with Python-side steps of its own would look like
        backend_tokenizer = Backend()

        def __call__(self, texts, **_):
            return {"input_ids": [[len(text)] for text in texts]}

    wrapper = Wrapper()
    assert tokenize._rust_backend(wrapper) is None
    assert tokenize.tokenize_plain(wrapper, ["abc", "de"]) == [[3], [2]]
