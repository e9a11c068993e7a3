"""`m3pipe encode`: one JSONL file through the engine to an output directory, no queue."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.engine.embedder import EncodeStats, Engine, ProgressCallback
from pipeline.engine.table import with_fields
from pipeline.errors import InputError
from pipeline.storage.location import Location, open_location
from pipeline.storage.manifest import build_manifest
from pipeline.storage.output_dir import MANIFEST, RejectLog, prepare_output_dir, write_json_atomic
from pipeline.storage.sink import part_name, write_shard
from producers.intake import IntakeCounts, accept_documents
from producers.lines import DEFAULT_MAX_RECORD_BYTES
from producers.readers import read_records
from producers.sharding import cut_shards

# A shard's text is held in memory with its vectors; bound it by characters too.
SHARD_MAX_CHARS = 8_000_000


@dataclass
class EncodeSummary:
    out_dir: Location
    intake: IntakeCounts = field(default_factory=IntakeCounts)
    files: list[dict[str, object]] = field(default_factory=list)
    stats: EncodeStats = field(default_factory=EncodeStats)

    @property
    def rows(self) -> int:
        return self.stats.rows

    @property
    def input_records(self) -> int:
        return self.intake.input_records

    @property
    def documents(self) -> int:
        return self.intake.documents

    @property
    def rejected(self) -> int:
        return self.intake.rejected


def encode_file(
    input_path: Location | Path | str,
    out_dir: Location | Path | str,
    engine: Engine,
    *,
    id_field: str = "id",
    text_field: str = "text",
    keep_fields: tuple[str, ...] = (),
    input_format: str = "auto",
    shard_docs: int = 1000,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> EncodeSummary:
    """Encode every valid record of `input_path`; every record ends as a row or a reject."""
    started = time.time()
    source_location = open_location(input_path)
    items = read_records(
        source_location,
        input_format,
        id_field=id_field,
        text_field=text_field,
        keep_fields=keep_fields,
        max_record_bytes=max_record_bytes,
    )
    first = next(items, None)
    if first is None:
        raise InputError(f"{input_path} holds no records (empty file)")
    out = prepare_output_dir(out_dir, overwrite, resumable=False)
    summary = EncodeSummary(out_dir=out)
    source = str(input_path)

    with RejectLog(out) as rejects:
        items = itertools.chain([first], items)
        docs = accept_documents([(source, items)], rejects, summary.intake)
        shards = cut_shards(docs, shard_docs, SHARD_MAX_CHARS)
        for index, (shard, result) in enumerate(engine.encode_stream(shards, progress)):
            name = part_name(index)
            written = write_shard(with_fields(result.table, shard, keep_fields), out / name)
            summary.stats.add(result.stats)
            summary.files.append(
                {
                    "name": name,
                    "documents": len(shard),
                    "rows": result.table.num_rows,
                    "tokens": result.stats.tokens,
                    "bytes": written.size(),
                }
            )
    if not summary.intake.balanced():
        raise AssertionError("record accounting does not add up")  # a bug, never bad input
    write_json_atomic(
        out / MANIFEST, manifest(summary, engine, source, id_field, text_field, started)
    )
    return summary


def manifest(
    summary: EncodeSummary,
    engine: Engine,
    source: str,
    id_field: str,
    text_field: str,
    started: float,
) -> dict[str, object]:
    stats = summary.stats
    return build_manifest(
        job={
            "command": "encode",
            "inputs": [source],
            "id_field": id_field,
            "text_field": text_field,
            "options": engine.options.model_dump(mode="json"),
            "batch_tokens": engine.batch_tokens,
        },
        model=engine.file_metadata(),
        files=summary.files,
        counts={
            "input_records": summary.input_records,
            "documents": summary.documents,
            "rows": stats.rows,
            "rejected": summary.rejected,
            "tokens": stats.tokens,
        },
        stats={
            "encode_seconds": round(stats.seconds, 3),
            "wall_seconds": round(time.time() - started, 3),
            "tokens_per_second": round(stats.tokens_per_second, 1),
            "padding_efficiency": round(stats.padding_efficiency, 4),
            "batches": stats.batches,
        },
    )
