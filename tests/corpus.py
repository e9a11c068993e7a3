"""Small deterministic corpora for tests."""

from __future__ import annotations

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
