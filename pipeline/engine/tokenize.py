"""Turn documents into model input sequences: truncated, or chunked into windows.

Only what is kept is tokenized: a long document to truncate costs a prefix of ~6 characters
a kept token (a shard's such documents in one call), and a long document to chunk is
tokenized piece by piece into int32 arrays, so one giant record never costs the tokenizer's
~250 bytes per byte of text.
Pieces are cut at a space, where the XLM-RoBERTa pre-tokenizer (Metaspace) splits words,
and only tokens of words that end before the cut are taken from a piece, so the tokens
are the ones the whole text gives (tests/pipeline/engine/test_tokenize.py checks it).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.options import EncodeOptions

# Texts up to this many characters per kept token are tokenized whole, in one batch call.
_CHARS_PER_TOKEN_GUESS = 8
_MIN_PIECE_CHARS = 16_384
# A text to truncate is tokenized from a prefix of this many characters a kept token
# (XLM-RoBERTa's tokenizer makes a token of ~4-5 characters of English, fewer of most other
# scripts) once it is over twice that long: a 512-token window then costs ~3 KB of text,
# not the whole (a prefix's tokens carry offsets, which cost ~1.5x the plain tokens: below
# twice the prefix the whole text is as cheap).
_PREFIX_CHARS_PER_TOKEN = 6
# A piece with no space in its last this-many characters (one giant "word") is cut there
# anyway, and tokens ending in that tail are dropped: the only case where the tokens rest
# on the tokenizer's segmentation being local rather than on word boundaries.
_NO_SPACE_TAIL = 4096


@dataclass
class TokenizedShard:
    """Sequences of one shard, in input order (a document's chunks are contiguous)."""

    ids: list[Seq[int]]  # each with <s> ... </s> (lists, or int32 arrays for long documents)
    doc_index: np.ndarray  # int64: the document each sequence belongs to
    chunk: np.ndarray  # int32: chunk number within its document (0 when not chunked)
    truncated: np.ndarray  # bool

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(s) for s in self.ids), dtype=np.int64, count=len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)


def chunk_starts(n_content: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows of `window` tokens overlapping by `overlap`, covering all."""
    stride = window - overlap
    starts = [0]
    while starts[-1] + window < n_content:
        starts.append(starts[-1] + stride)
    return starts


def tokenize_texts(
    tokenizer: Any, texts: Seq[str], options: EncodeOptions, cls_id: int, eos_id: int
) -> TokenizedShard:
    """Tokenize once without special tokens, then cut exactly as HF truncation would.

    `<s> + content[:max_length-2] + </s>` equals `tokenizer(text, truncation=True,
    max_length=max_length)` for XLM-RoBERTa's template (checked when the model loads).
    """
    window = options.max_length - 2
    content = _content_tokens(tokenizer, texts, window, options.chunked)
    ids: list[Seq[int]] = []
    doc_index: list[int] = []
    chunk: list[int] = []
    truncated: list[bool] = []
    for index, tokens in enumerate(content):
        if options.chunked:
            for number, start in enumerate(
                chunk_starts(len(tokens), window, options.chunk_overlap)
            ):
                ids.append(_framed(tokens[start : start + window], cls_id, eos_id))
                doc_index.append(index)
                chunk.append(number)
                truncated.append(False)
        else:
            ids.append(_framed(tokens[:window], cls_id, eos_id))
            doc_index.append(index)
            chunk.append(0)
            truncated.append(len(tokens) > window)
    return TokenizedShard(
        ids=ids,
        doc_index=np.asarray(doc_index, dtype=np.int64),
        chunk=np.asarray(chunk, dtype=np.int32),
        truncated=np.asarray(truncated, dtype=bool),
    )


def _framed(tokens: Seq[int], cls_id: int, eos_id: int) -> Seq[int]:
    if isinstance(tokens, np.ndarray):
        return np.concatenate(([cls_id], tokens, [eos_id])).astype(np.int32)
    return [cls_id, *tokens, eos_id]


def _content_tokens(tokenizer: Any, texts: Seq[str], window: int, chunked: bool) -> list[Any]:
    """Each text's content tokens (no specials): all of them when `chunked`, else at least
    the first `window + 1` (enough to tell truncation), tokenizing long texts by pieces."""
    long_after = max(window * _CHARS_PER_TOKEN_GUESS, _MIN_PIECE_CHARS)
    prefix_chars = (window + 1) * _PREFIX_CHARS_PER_TOKEN
    if not chunked:
        long_after = min(long_after, 2 * prefix_chars)
    short = [i for i, text in enumerate(texts) if len(text) <= long_after]
    content: list[Any] = [None] * len(texts)
    if short:
        batch = tokenize_plain(tokenizer, [texts[i] for i in short])
        for i, whole in zip(short, batch, strict=True):
            content[i] = whole
    long = [i for i, kept in enumerate(content) if kept is None]
    if long and not chunked:  # one batch of prefixes; a prefix short of the window: below
        found = prefix_tokens(tokenizer, [texts[i] for i in long], window + 1, prefix_chars)
        for i, leading in zip(long, found, strict=True):
            content[i] = leading
    for i, text in enumerate(texts):
        if content[i] is None:
            content[i] = (
                all_tokens(tokenizer, text, long_after)
                if chunked
                else leading_tokens(tokenizer, text, window + 1, long_after)
            )
    return content


def tokenize_plain(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    backend = _rust_backend(tokenizer)
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # no offsets
        return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
    return _wrapped_tokens(tokenizer, texts)


def _wrapped_tokens(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return list(
        tokenizer(
            texts,
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
    )


# Texts the Rust backend must tokenize as the Python wrapper does before it is used alone.
_PROBES = [
    "m3pipe template check",
    "  Leading spaces, UPPER case, punctuation: ça va? 12.5% — «quotes» and\ttabs\n",
    "Кириллица, ελληνικά, العربية, हिन्दी, 中文字符, 한국어, emoji 🙂👍🏽, e\u0301 (combining)",
]
_agrees: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _rust_backend(tokenizer: Any) -> Any:
    """The fast tokenizer's Rust backend, to be called without transformers' per-call work
    (~0.1 ms of CPU a 512-token document, a sixth of tokenizing), when it gives the ids the
    wrapper gives on the probes and holds no truncation or padding (a wrapper's call that
    asks for them leaves them set); else None and the wrapper is called, as before."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None
    if tokenizer not in _agrees:
        ids = [e.ids for e in backend.encode_batch(_PROBES, add_special_tokens=False)]
        _agrees[tokenizer] = ids == _wrapped_tokens(tokenizer, _PROBES)
    return backend if _agrees[tokenizer] else None


def prefix_tokens(
    tokenizer: Any, texts: list[str], count: int, chars: int
) -> list[list[int] | None]:
    """The first `count` content tokens of each text, from its first `chars` characters cut
    at their last space (the tokens of whole words, as `_piece_tokens` keeps them), all in
    one call; None for a text whose prefix holds fewer (then `leading_tokens`)."""
    prefixes = [text[:chars] for text in texts]
    cuts = [prefix.rfind(" ") for prefix in prefixes]
    encoded = _with_offsets(tokenizer, prefixes)
    found: list[list[int] | None] = []
    for (ids, offsets), cut in zip(encoded, cuts, strict=True):
        kept = _tokens_before(ids, offsets, cut) if cut > 0 else []  # no space: not cut here
        found.append(kept[:count] if len(kept) >= count else None)
    return found


def _with_offsets(tokenizer: Any, texts: list[str]) -> list[tuple[Seq[int], Seq[Any]]]:
    """Each text's content ids with their (start, end) characters, in one call (the Rust
    backend's where it may be called alone, as in `tokenize_plain`)."""
    backend = _rust_backend(tokenizer)
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [(encoding.ids, encoding.offsets) for encoding in encodings]
    wrapped = tokenizer(
        texts,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        return_offsets_mapping=True,
    )
    return list(zip(wrapped["input_ids"], wrapped["offset_mapping"], strict=True))


def _tokens_before(ids: Seq[int], offsets: Seq[tuple[int, int]], cut: int) -> list[int]:
    """The tokens that end at or before character `cut`."""
    kept: list[int] = []
    for token, (_, stop) in zip(ids, offsets, strict=True):
        if stop > cut:
            break
        kept.append(token)
    return kept


def leading_tokens(tokenizer: Any, text: str, count: int, piece_chars: int) -> list[int]:
    """The first `count` content tokens of `text` (all of them if it has fewer), tokenizing
    a prefix that doubles until it holds `count` tokens of whole words."""
    size = piece_chars
    while size < len(text):
        tokens, _ = _piece_tokens(tokenizer, text, 0, size)
        if len(tokens) >= count:
            return tokens[:count]
        size *= 2
    return tokenize_plain(tokenizer, [text])[0][:count]


def all_tokens(tokenizer: Any, text: str, piece_chars: int) -> np.ndarray:
    """Every content token of `text`, tokenized piece by piece, as one int32 array."""
    parts: list[np.ndarray] = []
    start = 0
    while len(text) - start > piece_chars:
        tokens, start = _piece_tokens(tokenizer, text, start, start + piece_chars)
        parts.append(np.asarray(tokens, dtype=np.int32))
    parts.append(np.asarray(tokenize_plain(tokenizer, [text[start:]])[0], dtype=np.int32))
    return np.concatenate(parts)


def _piece_tokens(tokenizer: Any, text: str, start: int, end: int) -> tuple[list[int], int]:
    """Tokens of text[start:end] up to its last space, and where the next piece starts (at
    that space, which becomes the next word's "▁" as it does in the whole text)."""
    cut = text.rfind(" ", max(start, end - _NO_SPACE_TAIL), end)
    if cut <= start:  # no space near the end: cut inside the giant word, drop its tail
        cut = end - _NO_SPACE_TAIL // 2
    [(ids, offsets)] = _with_offsets(tokenizer, [text[start:end]])
    return _tokens_before(ids, offsets, cut - start), cut
