"""What an `m3pipe encode` or `m3pipe rerank` run reports: its summary, and its output's
manifest (the command, the model's identity, the counts, resumed and reused ones too, and the
run's figures)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.engine.stats import BatchStats
from pipeline.inputs.intake import IntakeCounts
from pipeline.storage.location import Location
from pipeline.storage.manifest import build_manifest
from pipeline.tasks import Reading, TaskKind


@dataclass
class LocalSummary:
    out_dir: Location
    stats: BatchStats
    intake: IntakeCounts = field(default_factory=IntakeCounts)  # in the task's items
    parts: int = 0
    rows: int = 0
    reused: int | None = None  # with --reuse: documents copied from the previous output
    dropped: int | None = None  # ... and its documents no longer in the input
    resumed: int | None = None  # with --resume: items whose part an earlier run wrote
    resumed_tokens: int = 0  # ... and their tokens

    @property
    def input_records(self) -> int:
        return self.intake.input_records

    @property
    def accepted(self) -> int:
        return self.intake.documents

    @property
    def rejected(self) -> int:
        return self.intake.rejected


def local_manifest(
    kind: TaskKind,
    summary: LocalSummary,
    engine: Any,
    source: str,
    reading: Reading,
    started: float,
) -> dict[str, object]:
    stats = summary.stats
    read, accepted = kind.counts
    counts = {
        read: summary.input_records,
        accepted: summary.accepted,
        "rows": summary.rows,
        "rejected": summary.rejected,
        "tokens": stats.tokens + summary.resumed_tokens,
    }
    if summary.resumed is not None:
        counts["resumed"] = summary.resumed
    if summary.reused is not None:
        counts |= {
            "reused": summary.reused,
            "encoded": summary.accepted - summary.reused,
            "dropped": summary.dropped or 0,
        }
    return build_manifest(
        job={
            "command": kind.command,
            "inputs": [source],
            **kind.manifest_job(reading, engine),
            "batch_tokens": engine.batch_tokens,
        },
        model=engine.file_metadata(),
        parts=summary.parts,
        counts=counts,
        stats={
            **kind.manifest_stats(stats),
            "wall_seconds": round(time.time() - started, 3),
            "padding_efficiency": round(stats.padding_efficiency, 4),
            "batches": stats.batches,
        },
    )
