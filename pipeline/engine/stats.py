"""What a run of token-budget batches cost: the figures every task reports."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Self


@dataclass
class BatchStats:
    tokens: int = 0  # real tokens fed to the model, specials included
    padded_tokens: int = 0
    batches: int = 0
    seconds: float = 0.0
    oom_splits: int = 0  # batches split in two after the device ran out of memory

    def add(self, other: Self) -> None:
        for item in fields(self):
            setattr(self, item.name, getattr(self, item.name) + getattr(other, item.name))

    @property
    def padding_efficiency(self) -> float:
        return self.tokens / self.padded_tokens if self.padded_tokens else 1.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0
