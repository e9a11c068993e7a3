"""What a finished shard reports: one value, built once where the shard finished (the shard
runner, `submit --resume`, the local driver), and read by everything that counts it: the
shard-state script's count record in Redis, finalisation, the shard log and the manifest.

In Redis a done shard's counts are a fixed record of the job's counts string (BITFIELD),
28 bytes a shard, instead of a JSON info: a count added here is added to the record layout
(COUNT_FIELDS) beside it, and nowhere else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

# (name, BITFIELD type, bit offset in the record). `reused` is stored plus one, so 0 means
# "not a --reuse job".
COUNT_FIELDS = (
    ("documents", "u32", 0),
    ("rows", "u32", 32),
    ("tokens", "i64", 64),
    ("bytes", "i64", 128),
    ("reused", "u32", 192),
)
COUNT_RECORD_BITS = 224  # 28 bytes a shard
# The same record as bytes: BITFIELD stores each integer most significant bit first.
RECORD = struct.Struct(">IIqqI")
assert RECORD.size * 8 == COUNT_RECORD_BITS
# A Redis string holds at most 2^32 bits: the counts of ~19 million shards.
MAX_SHARDS = (1 << 32) // COUNT_RECORD_BITS


@dataclass(frozen=True)
class ShardReport:
    """A finished shard: its documents (or pairs), rows written, tokens, the part file's
    bytes (`part_bytes`), the seconds it took (added to the job's total, not kept per
    shard) and, for a --reuse job, how many documents were copied from the previous output."""

    documents: int
    rows: int
    tokens: int
    part_bytes: int
    seconds: float = 0.0
    reused: int | None = None

    def counts(self) -> dict[str, int]:
        """The counts kept per shard, as `infos_of` and `shard_records` read them back."""
        kept = {"documents": self.documents, "rows": self.rows, "tokens": self.tokens}
        kept["bytes"] = self.part_bytes
        if self.reused is not None:
            kept["reused"] = self.reused
        return kept

    def log_entry(self, shard: int, name: str, items: str) -> dict[str, Any]:
        """The shard's line in `_shards.jsonl` (`items`: "documents" or "pairs")."""
        entry: dict[str, Any] = {"shard": shard, "state": "done", "name": name}
        entry[items] = self.documents
        entry |= {key: value for key, value in self.counts().items() if key != "documents"}
        return entry

    def record_args(self) -> list[str | int]:
        """The counts as the shard-state script's (BITFIELD type, bit offset, value)
        triples; a count that does not fit its field is refused, never wrapped."""
        args: list[str | int] = []
        counts = self.counts()
        for name, field_type, offset in COUNT_FIELDS:
            value = counts.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"a done shard's {name} must be a count, not {value!r}")
            if name == "reused":
                value = value + 1 if "reused" in counts else 0
            if value >= 1 << (int(field_type[1:]) - (field_type[0] == "i")):
                raise ValueError(f"a done shard's {name} does not fit its record: {value}")
            args += [field_type, offset, value]
        return args

    @classmethod
    def from_counts(cls, counts: dict[str, Any], seconds: float = 0.0) -> ShardReport:
        """A report from counts as `counts()` gives them (a count missing is 0)."""
        return cls(
            documents=counts.get("documents", 0),
            rows=counts.get("rows", 0),
            tokens=counts.get("tokens", 0),
            part_bytes=counts.get("bytes", 0),
            seconds=seconds,
            reused=counts.get("reused"),
        )

    @classmethod
    def from_record(cls, record: bytes) -> ShardReport:
        """A done shard's counts from its record's bytes (zeros past the string's end)."""
        documents, rows, tokens, size, reused = RECORD.unpack(record.ljust(RECORD.size, b"\0"))
        return cls(documents, rows, tokens, size, reused=reused - 1 if reused else None)
