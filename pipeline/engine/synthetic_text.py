"""Deterministic multilingual text, for training test tokenizers and building benchmark corpora.

Words are drawn from per-script lexicons with Zipf-like frequencies, so a tokenizer trained
on this text learns real sub-word structure. No natural-language data is shipped or fetched.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from itertools import accumulate

_ALPHABETS: dict[str, str] = {
    "latin": "abcdefghijklmnopqrstuvwxyzàéèüöäñçß",
    "cyrillic": "абвгдежзийклмнопрстуфхцчшщыэюя",
    "greek": "αβγδεζηθικλμνξοπρστυφχψω",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "devanagari": "कखगघचछजझटठडढणतथदधनपफबभमयरलवशसहािीुूेैोौ",
    "cjk": "".join(chr(c) for c in range(0x4E00, 0x4E00 + 600)),
    "hangul": "".join(chr(c) for c in range(0xAC00, 0xAC00 + 400)),
}
_NO_SPACES = {"cjk"}
_EMOJI = "😀🚀🌍🔥✨🎉🧠📚🤖🍕"
_PUNCT = ".,;:!?"
SCRIPTS = tuple(_ALPHABETS)


class TextGenerator:
    """Makes sentences and documents from a seeded random state."""

    def __init__(self, seed: int = 0, words_per_script: int = 2500) -> None:
        self._rng = random.Random(seed)
        self._lexicons = {
            script: self._make_lexicon(alphabet, words_per_script)
            for script, alphabet in _ALPHABETS.items()
        }
        # Zipf-like weights shared by every lexicon: word k has weight 1/(k+1), given to
        # `choices` summed (what it would sum on every call from the weights themselves).
        self._cum_weights = list(accumulate(1.0 / (rank + 1) for rank in range(words_per_script)))

    def _make_lexicon(self, alphabet: str, size: int) -> list[str]:
        words: set[str] = set()
        while len(words) < size:
            length = self._rng.randint(1, 4) if len(alphabet) > 200 else self._rng.randint(2, 9)
            words.add("".join(self._rng.choice(alphabet) for _ in range(length)))
        return sorted(words)

    def sentence(self, n_words: int, script: str | None = None) -> str:
        script = script or self._rng.choice(SCRIPTS)
        words = self._rng.choices(self._lexicons[script], cum_weights=self._cum_weights, k=n_words)
        if self._rng.random() < 0.1:
            words.insert(self._rng.randrange(len(words) + 1), self._rng.choice(_EMOJI))
        joiner = "" if script in _NO_SPACES else " "
        return joiner.join(words) + self._rng.choice(_PUNCT)

    def document(self, n_words: int, multilingual: bool = True) -> str:
        """About `n_words` words in sentences of 5 to 25 words, switching script at times."""
        script = self._rng.choice(SCRIPTS)
        parts: list[str] = []
        remaining = max(1, n_words)
        while remaining > 0:
            if multilingual and self._rng.random() < 0.2:
                script = self._rng.choice(SCRIPTS)
            count = min(remaining, self._rng.randint(5, 25))
            parts.append(self.sentence(count, script))
            remaining -= count
        return " ".join(parts)

    def sentences(self, count: int) -> Iterator[str]:
        for _ in range(count):
            yield self.sentence(self._rng.randint(3, 30))
