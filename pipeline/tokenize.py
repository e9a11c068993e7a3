"""Turn documents into model input sequences: truncated, or chunked into windows."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.options import EncodeOptions


@dataclass
class TokenizedShard:
    """Sequences of one shard, in input order (a document's chunks are contiguous)."""

    ids: list[list[int]]  # each with <s> ... </s>
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
    content = tokenizer(
        list(texts),
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    window = options.max_length - 2
    ids: list[list[int]] = []
    doc_index: list[int] = []
    chunk: list[int] = []
    truncated: list[bool] = []
    for index, tokens in enumerate(content):
        if options.chunked:
            for number, start in enumerate(
                chunk_starts(len(tokens), window, options.chunk_overlap)
            ):
                ids.append([cls_id, *tokens[start : start + window], eos_id])
                doc_index.append(index)
                chunk.append(number)
                truncated.append(False)
        else:
            ids.append([cls_id, *tokens[:window], eos_id])
            doc_index.append(index)
            chunk.append(0)
            truncated.append(len(tokens) > window)
    return TokenizedShard(
        ids=ids,
        doc_index=np.asarray(doc_index, dtype=np.int64),
        chunk=np.asarray(chunk, dtype=np.int32),
        truncated=np.asarray(truncated, dtype=bool),
    )
