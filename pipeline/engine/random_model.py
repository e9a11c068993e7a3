"""Randomly initialised models of the bge-m3 architecture, for tests and speed work.

A random embedder is an XLM-RoBERTa encoder, `colbert_linear.pt`, `sparse_linear.pt` and a
Unigram tokenizer built here from generated multilingual text, saved as an ordinary model
directory that FlagEmbedding loads like bge-m3. A random reranker is the same encoder with
a one-label sequence-classification head, the architecture of bge-reranker-v2-m3. Their
outputs mean nothing: they are never the real models.
"""

from __future__ import annotations

import fcntl
import heapq
import json
import math
import operator
import os
import re
import shutil
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from itertools import compress
from pathlib import Path

import torch

from pipeline.errors import ModelLoadError

RANDOM_PREFIX = "random:"
# Bump when the built files change, so stale caches are not reused.
BUILD_VERSION = 3
RERANKER_BUILD_VERSION = 2
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in XLM-RoBERTa
MAX_POSITIONS = 8194  # 8192 tokens + XLM-R's padding offset of 2
_SPACES = re.compile(" {2,}")


@dataclass(frozen=True)
class RandomShape:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab_size: int  # embedding rows; >= the trained tokenizer's vocabulary
    tokenizer_vocab: int


SHAPES: dict[str, RandomShape] = {
    "tiny": RandomShape(2, 64, 4, 128, vocab_size=2002, tokenizer_vocab=2000),
    "small": RandomShape(6, 384, 6, 1536, vocab_size=8002, tokenizer_vocab=8000),
    # bge-m3's real shape: XLM-RoBERTa large with 8194 positions.
    "full": RandomShape(24, 1024, 16, 4096, vocab_size=250002, tokenizer_vocab=32000),
}


def parse_random_spec(spec: str) -> str | None:
    """'random:small' -> 'small'; None when the spec is not a random one."""
    if not spec.startswith(RANDOM_PREFIX):
        return None
    size = spec[len(RANDOM_PREFIX) :]
    if size not in SHAPES:
        raise ModelLoadError(
            f"unknown random model size {size!r}: choose one of {', '.join(SHAPES)}"
        )
    return size


def unigram_vocab(
    sentences: Iterable[str], vocab_size: int, max_piece_length: int = 12
) -> list[tuple[str, float]]:
    """A Unigram vocabulary from substring counts, the same on every machine and run.

    The `tokenizers` Unigram trainer is not deterministic (its EM walks hash maps seeded per
    process: two builds differed in 754 of 32,000 positions), so random models built on two
    machines had different tokenizers and fingerprints. This is SentencePiece's seed
    vocabulary without the EM rounds: every character, then the substrings (up to
    `max_piece_length`, words prefixed with the Metaspace "▁") with the most characters
    covered (count x length, ties by the piece), each scored log(count / total)."""
    words: Counter[str] = Counter()
    for sentence in sentences:
        for word in _SPACES.sub(" ", unicodedata.normalize("NFKC", sentence)).split(" "):
            if word:
                words["▁" + word] += 1
    counts: Counter[str] = Counter()
    for word, frequency in words.items():
        n = len(word)
        ends = [min(n, start + max_piece_length) + 1 for start in range(n)]
        pieces = [word[start:end] for start in range(n) for end in range(start + 1, ends[start])]
        if frequency == 1:  # most words (CJK sentences are one): Counter counts in C
            counts.update(pieces)
        else:
            for piece in pieces:
                counts[piece] += frequency
    chars = sorted(piece for piece in counts if len(piece) == 1)
    room = vocab_size - len(SPECIAL_TOKENS) - len(chars)
    if room < 0:
        raise ModelLoadError(f"a vocabulary of {vocab_size} cannot hold {len(chars)} characters")
    longer = _most_covering(counts, room)
    pieces = sorted([*chars, *longer], key=lambda piece: (-counts[piece], piece))
    total = sum(counts[piece] for piece in pieces)
    return [(token, 0.0) for token in SPECIAL_TOKENS] + [
        (piece, math.log(counts[piece] / total)) for piece in pieces
    ]


def _most_covering(counts: Counter[str], room: int) -> list[str]:
    """The `room` pieces longer than one character with the largest count x length, ties
    by the piece (what `heapq.nsmallest(room, ..., key=(-count * length, piece))` gives, in
    another order), with the ~10^6 scores computed and ranked in C: ~10x faster."""
    candidates = list(compress(counts, map((1).__lt__, map(len, counts))))
    if room >= len(candidates) or room <= 0:
        return candidates if room > 0 else []
    scores = list(map(operator.mul, map(counts.__getitem__, candidates), map(len, candidates)))
    threshold = heapq.nlargest(room, scores)[-1]
    above = list(compress(candidates, map(threshold.__lt__, scores)))
    tied = sorted(compress(candidates, map(threshold.__eq__, scores)))
    return above + tied[: room - len(above)]


@cache  # a process that builds a model and a reranker of one size trains one vocabulary
def _vocabulary(vocab_size: int, seed: int) -> list[tuple[str, float]]:
    from pipeline.engine.synthetic_text import TextGenerator

    return unigram_vocab(TextGenerator(seed).sentences(20000), vocab_size)


def train_tokenizer(vocab_size: int, seed: int = 0):  # -> PreTrainedTokenizerFast
    """A SentencePiece-style Unigram tokenizer with XLM-RoBERTa's special tokens, built
    from generated multilingual text; byte-identical for the same size and seed."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    vocab = _vocabulary(vocab_size, seed)
    tok = Tokenizer(models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index("<unk>")))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens([*SPECIAL_TOKENS, "<mask>"])
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=MAX_POSITIONS - 2,
    )


def model_config(size: str):  # -> XLMRobertaConfig
    from transformers import XLMRobertaConfig

    shape = SHAPES[size]
    return XLMRobertaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )


def _check_size(size: str) -> None:
    if size not in SHAPES:
        raise ModelLoadError(
            f"unknown random model size {size!r}: choose one of {', '.join(SHAPES)}"
        )


def write_random_model(out_dir: Path, size: str, seed: int = 0) -> Path:
    """Build a random bge-m3-architecture model into `out_dir` (created; must not exist)."""
    from transformers import XLMRobertaModel

    _check_size(size)
    out_dir = Path(out_dir)
    shape = SHAPES[size]
    tokenizer = train_tokenizer(shape.tokenizer_vocab, seed)
    if len(tokenizer) > shape.vocab_size:
        raise AssertionError("tokenizer larger than the embedding table")
    torch.manual_seed(seed)
    model = XLMRobertaModel(model_config(size))
    colbert_linear = torch.nn.Linear(shape.hidden, shape.hidden)
    sparse_linear = torch.nn.Linear(shape.hidden, 1)

    out_dir.mkdir(parents=True, exist_ok=False)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    torch.save(colbert_linear.state_dict(), out_dir / "colbert_linear.pt")
    torch.save(sparse_linear.state_dict(), out_dir / "sparse_linear.pt")
    info = {
        "random": True,
        "size": size,
        "seed": seed,
        "build_version": BUILD_VERSION,
        "note": "randomly initialised weights of the bge-m3 architecture; not bge-m3",
    }
    (out_dir / "m3pipe_random_model.json").write_text(json.dumps(info, indent=2))
    return out_dir


def write_random_reranker(out_dir: Path, size: str, seed: int = 0) -> Path:
    """Build a random cross-encoder of bge-reranker-v2-m3's architecture into `out_dir`."""
    from transformers import XLMRobertaForSequenceClassification

    _check_size(size)
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(SHAPES[size].tokenizer_vocab, seed)
    config = model_config(size)
    config.num_labels = 1  # one relevance logit per (query, passage) pair
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(config)
    # The default init (std 0.02) gives logits within about 1e-3 of each other, as the
    # <s> state of a random encoder varies little between inputs; a scaled-up head spreads
    # them over tenths of a unit, so that ranks and parity checks say something.
    with torch.no_grad():
        for layer, scale in ((model.classifier.dense, 1.0), (model.classifier.out_proj, 30.0)):
            layer.weight.normal_(0.0, scale / layer.in_features**0.5)
    out_dir.mkdir(parents=True, exist_ok=False)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info = {
        "random": True,
        "kind": "reranker",
        "size": size,
        "seed": seed,
        "build_version": RERANKER_BUILD_VERSION,
        "note": "randomly initialised weights of the bge-reranker-v2-m3 architecture; "
        "not bge-reranker-v2-m3",
    }
    (out_dir / "m3pipe_random_model.json").write_text(json.dumps(info, indent=2))
    return out_dir


def cached_random_model(size: str, cache_dir: Path, seed: int = 0, reranker: bool = False) -> Path:
    """The path of a cached random model, building it once (safe across processes)."""
    if reranker:
        name = f"random-reranker-{size}-seed{seed}-v{RERANKER_BUILD_VERSION}"
    else:
        name = f"random-{size}-seed{seed}-v{BUILD_VERSION}"
    _check_size(size)
    build = write_random_reranker if reranker else write_random_model
    return built_once(
        Path(cache_dir) / "models" / name, "m3pipe_random_model.json",
        lambda directory: build(directory, size, seed),
    )  # fmt: skip


def built_once(target: Path, marker: str, build: Callable[[Path], object]) -> Path:
    """`target`, built by `build(directory)` unless it holds `marker` already: into a staging
    directory renamed into place, one builder at a time (workers started together, test
    processes side by side: the others wait for it and find the result)."""
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / marker).exists():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(staging / "built")
            try:
                os.rename(staging / "built", target)
            except OSError:
                # Another process finished first (one that took no lock); its copy is the same.
                if not (target / marker).exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
