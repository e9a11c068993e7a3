"""`m3pipe encode`: one JSONL file through the engine to an output directory, no queue."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import __version__
from pipeline.engine import EncodeStats, Engine, ProgressCallback
from pipeline.errors import InputError
from pipeline.output_dir import MANIFEST, REJECTS, RejectLog, prepare_output_dir, write_json_atomic
from pipeline.sink import part_name, write_shard
from producers.jsonl import JsonlItem, read_jsonl
from producers.sharding import cut_shards
from producers.validate import DuplicateIds
from schemas.document import Document, Reject

# A shard's text is held in memory with its vectors; bound it by characters too.
SHARD_MAX_CHARS = 8_000_000


@dataclass
class EncodeSummary:
    out_dir: Path
    input_records: int = 0
    documents: int = 0
    rejected: int = 0
    files: list[dict[str, object]] = field(default_factory=list)
    stats: EncodeStats = field(default_factory=EncodeStats)

    @property
    def rows(self) -> int:
        return self.stats.rows


def accepted_documents(
    items: Iterable[JsonlItem], rejects: RejectLog, summary: EncodeSummary, source: str
) -> Iterator[Document]:
    """Documents that pass validation and the duplicate-id policy; the rest go to rejects."""
    duplicates = DuplicateIds()
    for item in items:
        summary.input_records += 1
        result = item.result
        if isinstance(result, Document):
            where = f"line {item.line}"
            reason = duplicates.check(result, where)
            if reason is None:
                summary.documents += 1
                yield result
                continue
            result = Reject(source=source, line=item.line, id=result.id, reason=reason)
        rejects.add(result)
        summary.rejected += 1


def encode_file(
    input_path: Path,
    out_dir: Path,
    engine: Engine,
    *,
    id_field: str = "id",
    text_field: str = "text",
    shard_docs: int = 1000,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> EncodeSummary:
    """Encode every valid record of `input_path`; every record ends as a row or a reject."""
    started = time.time()
    items = read_jsonl(Path(input_path), id_field=id_field, text_field=text_field)
    first = next(items, None)
    if first is None:
        raise InputError(f"{input_path} holds no records (empty file)")
    out = prepare_output_dir(Path(out_dir), overwrite)
    summary = EncodeSummary(out_dir=out)
    source = str(input_path)

    with RejectLog(out) as rejects:
        docs = accepted_documents(itertools.chain([first], items), rejects, summary, source)
        shards = cut_shards(docs, shard_docs, SHARD_MAX_CHARS)
        for index, (shard, result) in enumerate(engine.encode_stream(shards, progress)):
            name = part_name(index)
            write_shard(result.table, out / name)
            summary.stats.add(result.stats)
            summary.files.append(
                {
                    "name": name,
                    "documents": len(shard),
                    "rows": result.table.num_rows,
                    "tokens": result.stats.tokens,
                    "bytes": (out / name).stat().st_size,
                }
            )
    if summary.input_records != summary.documents + summary.rejected:
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
    return {
        "m3pipe_version": __version__,
        "job": {
            "command": "encode",
            "inputs": [source],
            "id_field": id_field,
            "text_field": text_field,
            "options": engine.options.model_dump(mode="json"),
            "batch_tokens": engine.batch_tokens,
        },
        "model": engine.file_metadata(),
        "files": summary.files,
        "rejects_file": REJECTS,
        "counts": {
            "input_records": summary.input_records,
            "documents": summary.documents,
            "rows": stats.rows,
            "rejected": summary.rejected,
            "tokens": stats.tokens,
        },
        "stats": {
            "encode_seconds": round(stats.seconds, 3),
            "wall_seconds": round(time.time() - started, 3),
            "tokens_per_second": round(stats.tokens_per_second, 1),
            "padding_efficiency": round(stats.padding_efficiency, 4),
            "batches": stats.batches,
        },
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
