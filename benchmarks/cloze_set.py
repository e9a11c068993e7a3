"""An offline retrieval set: passages are the docstrings of Python's standard library (read
with `ast` from the interpreter's own sources, nothing imported), and each query is one
sentence cut out of its passage (inverse cloze, as in Lee et al. 2019): the passage it was
cut from, without it, is the one relevant document.

The same Python gives the same set: which interpreter built it is in every result
(`python_version`). Used with the trained proxy (benchmarks/proxy_model.py) to measure what
a storage or precision choice costs in MRR@10 and nDCG@10.
"""

from __future__ import annotations

import ast
import functools
import random
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@dataclass(frozen=True)
class ClozeSet:
    passages: dict[str, str]  # id -> text, the query's sentence removed from its own
    queries: dict[str, str]  # id -> sentence
    relevant: dict[str, str]  # query id -> passage id
    python_version: str


@functools.cache
def docstrings(root: Path, min_words: int, max_words: int) -> list[str]:
    """Docstrings of `min_words`..`max_words` words of every module under `root`, in a fixed
    order, each once, whitespace collapsed. (Parsing the library takes seconds: once.)"""
    found: dict[str, None] = {}
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "idlelib" in path.parts or "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                text = " ".join((ast.get_docstring(node) or "").split())
                if min_words <= len(text.split()) <= max_words:
                    found.setdefault(text)
    return list(found)


def cloze_set(passages: int = 1000, queries: int = 200, seed: int = 0) -> ClozeSet:
    """`passages` docstrings of 40-200 words with at least three sentences, and `queries`
    of them with one sentence (of 6+ words, not the first) cut out as the query.
    ValueError, saying how many there are, if there are fewer than asked for."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = [t for t in docstrings(root, 40, 200) if len(SENTENCE.split(t)) >= 3]
    if passages > len(texts):
        raise ValueError(
            f"{passages} passages asked for: this Python's standard library has {len(texts)}"
        )
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(texts)), passages))
    corpus = {f"p{i:05d}": texts[i] for i in chosen}
    asked: dict[str, str] = {}
    relevant: dict[str, str] = {}
    for pid in rng.sample(sorted(corpus), len(corpus)):
        if len(asked) == queries:
            break
        sentences = SENTENCE.split(corpus[pid])
        candidates = [i for i in range(1, len(sentences)) if len(sentences[i].split()) >= 6]
        if not candidates:
            continue
        cut = rng.choice(candidates)
        qid = f"q{len(asked):04d}"
        asked[qid] = sentences[cut]
        relevant[qid] = pid
        corpus[pid] = " ".join(sentences[:cut] + sentences[cut + 1 :])
    if len(asked) < queries:
        raise ValueError(f"{queries} queries asked for: {passages} passages give {len(asked)}")
    version = ".".join(map(str, sys.version_info[:3]))
    return ClozeSet(corpus, asked, relevant, version)
