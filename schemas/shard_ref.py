"""A shard by reference: where its documents are in the job's inputs, not the documents.

The producer reads and validates every record as before (duplicates, rejects and counts are
decided once, there); a shard of documents read from a plain JSONL input then travels as
byte ranges and line numbers of that input, a few hundred bytes whatever its text. The
worker reads the ranges back from the shared filesystem or object store and checks that
they hold exactly the documents the producer accepted (their digest).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SEGMENTS = 10_000
MAX_RUNS = 100_000  # a shard holds at most this many separate runs of lines


class Segment(BaseModel):
    """Lines of one input read from byte `start` (line `first_line`) to byte `end`; the
    shard's documents are the lines in `runs` (inclusive [from, to] line numbers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: int = Field(ge=0, le=1_000_000)  # index into JobSpec.inputs: nothing else is read
    start: int = Field(ge=0)
    end: int = Field(ge=1)
    first_line: int = Field(ge=1)
    runs: list[tuple[int, int]] = Field(min_length=1, max_length=MAX_RUNS)

    @model_validator(mode="after")
    def _ordered(self) -> Segment:
        if self.end <= self.start:
            raise ValueError("a segment ends after it starts")
        previous = self.first_line - 1
        for low, high in self.runs:
            if not previous < low <= high:
                raise ValueError("runs are ascending, disjoint and from first_line on")
            previous = high
        return self

    @property
    def lines(self) -> int:
        return sum(high - low + 1 for low, high in self.runs)


class ShardRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    segments: list[Segment] = Field(min_length=1, max_length=MAX_SEGMENTS)
    documents: int = Field(ge=1)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")  # of the documents (jobs.resume)

    @model_validator(mode="after")
    def _counted(self) -> ShardRef:
        if sum(segment.lines for segment in self.segments) != self.documents:
            raise ValueError("the segments' lines are not the shard's documents")
        return self
