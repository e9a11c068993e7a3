"""Deterministic corpora: small mixed ones for tests, length-controlled ones for benchmarks."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.engine.synthetic_text import TextGenerator
from schemas.document import Document


def mixed_texts(seed: int = 0) -> list[str]:
    """Short, long (> 2000 tokens), over-length (> 4096 tokens), multilingual and emoji."""
    gen = TextGenerator(seed)
    return [
        "hello",
        gen.sentence(8, "latin"),
        gen.document(1000),  # > 2000 tokens
        gen.sentence(12, "cyrillic") + " " + gen.sentence(12, "cjk"),
        "🚀🔥 emoji only 😀 ✨",
        "😀",
        gen.document(3000),  # > 4096 tokens: truncated at max_length
        gen.sentence(20, "arabic") + " " + gen.sentence(20, "devanagari"),
        gen.document(40),
        gen.sentence(15, "hangul") + " 🎉 " + gen.sentence(10, "greek"),
        "a",
        gen.document(120),
    ]


def documents(texts: list[str]) -> list[Document]:
    return [Document(id=f"doc-{i}", text=t) for i, t in enumerate(texts)]


def lognormal_texts(
    tokenizer: Any, n_docs: int, n_long: int, seed: int, fixed_tokens: int | None = None
) -> list[str]:
    """The benchmarks' corpus: lognormal token lengths (median ~200), `n_long` texts of
    4000-8000 tokens, none > 8192; or, with `fixed_tokens`, texts a little longer than that
    (cut to it by --max-length). Lengths are measured with `tokenizer`."""
    rng = np.random.default_rng(seed)
    gen = TextGenerator(seed)
    if fixed_tokens:
        targets = np.full(n_docs, int(fixed_tokens * 1.2))
    else:
        targets = np.clip(rng.lognormal(np.log(200), 1.0, n_docs), 8, 3500).astype(int)
        targets[rng.choice(n_docs, n_long, replace=False)] = rng.integers(4000, 8000, n_long)
    texts = []
    for target in targets:
        words = max(1, int(target / 2))
        text = gen.document(words)
        n = len(tokenizer(text)["input_ids"])
        # Rescale once to land near the target, then make sure it stays under 8192.
        text = gen.document(max(1, int(words * target / max(n, 1))))
        while len(tokenizer(text)["input_ids"]) > 8192:
            text = text[: int(len(text) * 0.9)]
        texts.append(text)
    return texts
