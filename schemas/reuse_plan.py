"""`--reuse`: which documents of a shard are copied from a previous output, not encoded.

The producer finds each document's id in the previous output's index; where the text digest
matches too, the document's rows are copied. A shard's copies travel as runs: documents
[at, at + count) of the shard are rows [row, row + rows) of the previous output's part file
number `part`. A corpus re-indexed in the same order gives one run per shard, a few dozen
bytes whatever the shard's size. The worker checks every copied row's id and digest against
the documents it holds, so a forged or outdated run can only make it encode more.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_REUSE_RUNS = 100_000  # at most one per document of the largest shard


class ReuseRun(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: int = Field(ge=0)  # the first document's position in the shard
    count: int = Field(ge=1)  # documents
    part: int = Field(ge=0, le=9_999_999)  # the previous output's part file number
    row: int = Field(ge=0)  # its first row there
    rows: int = Field(ge=1)  # rows: one per document, or one per chunk


def runs_problem(runs: list[ReuseRun], documents: int) -> str | None:
    """Why `runs` cannot describe a shard of `documents` documents, or None."""
    end = 0
    for run in runs:
        if run.at < end:
            return "reuse runs overlap or are out of order"
        if run.rows < run.count:
            return "a reuse run has fewer rows than documents"
        end = run.at + run.count
    if end > documents:
        return "a reuse run points past the shard's documents"
    return None
