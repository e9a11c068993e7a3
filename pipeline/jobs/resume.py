"""`--resume`: which shards of an earlier submission to the same output directory are done.

Shards are cut deterministically from the inputs and the job spec, so shard N of a resumed
submission holds the same documents as shard N did before if nothing changed. Each part file
records a digest of the documents it was made from (schema metadata key `m3pipe.shard`);
a shard is skipped only when its file exists, is whole, and carries the same digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from pipeline.errors import ResumeError
from pipeline.storage.location import Location, open_location
from pipeline.storage.output_dir import JOB_FILE
from schemas.document import Document
from schemas.job import JobSpec, ShardMessage
from schemas.output import read_output_metadata

SHARD_METADATA_KEY = b"m3pipe.shard"

# Spec fields that decide how shards are cut and what each row holds. Anything else (queue,
# max_queued, created_at) may change between the first run and the resumed one.
SAME_ON_RESUME = (
    "task",
    "precision",
    "inputs",
    "input_format",
    "model",
    "options",
    "rerank",
    "id_field",
    "text_field",
    "keep_fields",
    "shard_docs",
    "shard_bytes",
    "shard_tokens",
    "reuse",
)


def documents_digest(documents: Sequence[BaseModel]) -> str:
    """The shard's digest: sha256 over the `item_digest` of each of its items (documents,
    or pairs), in order. A digest of digests, so a producer can take each document's from
    where it was read (a reading process: pipeline/inputs/readers/jsonl_columns.py) and
    join them later."""
    return join_digests([item_digest(doc) for doc in documents])


def item_digest(item: BaseModel) -> bytes:
    """sha256 of one item, every field: its `model_dump_json()` and a newline."""
    return hashlib.sha256(_item_json(item).encode("utf-8")).digest()


def join_digests(digests: Iterable[bytes]) -> str:
    """The shard digest of items with these `item_digest`s, in order."""
    return hashlib.sha256(b"".join(digests)).hexdigest()


_json_string = json.encoder.encode_basestring


def plain_document_digest(doc_id: str, text: str) -> bytes:
    """`item_digest` of the Document with this id and text and no kept fields."""
    return hashlib.sha256(_plain_document_json(doc_id, text).encode("utf-8")).digest()


def _item_json(item: BaseModel) -> str:
    """`item.model_dump_json() + "\n"`; for a Document without kept fields (nearly all)
    written here, at a third of the cost: the same escapes
    (tests/pipeline/runtime/test_resume.py)."""
    if type(item) is Document and item.fields is None:
        return _plain_document_json(item.id, item.text)
    return item.model_dump_json() + "\n"


def _plain_document_json(doc_id: str, text: str) -> str:
    return f'{{"id":{_json_string(doc_id)},"text":{_json_string(text)},"fields":null}}\n'


def shard_footer(facts: dict[str, Any]) -> dict[bytes, bytes]:
    """The shard's facts as file metadata (a streamed part's footer)."""
    return {SHARD_METADATA_KEY: json.dumps(facts, sort_keys=True).encode("utf-8")}


@dataclass(frozen=True)
class ShardFile:
    facts: dict[str, Any]  # job_id, shard, digest, documents, rows, tokens
    model: dict[str, Any]  # the engine's file metadata (model, dtype, modes...)


def message_digest(message: ShardMessage) -> str:
    """The digest of a whole shard message as sent: registered with the shard, so that a
    worker acts only on the message that was registered (a forged copy that keeps the
    documents' digest but names other inputs or byte ranges is refused untouched)."""
    return hashlib.sha256(message.model_dump_json().encode("utf-8")).hexdigest()[:32]


def read_shard_file(target: Location | Path | str) -> ShardFile | None:
    """What a finished part file records, or None if it is missing, damaged or too old."""
    location = open_location(target)
    try:
        footer = pq.read_metadata(location.path, filesystem=location.fs)
        schema = footer.schema.to_arrow_schema()
        # A worker's streamed part has the facts in the footer's key-value metadata (known
        # only once written: pipeline/storage/part_writer.py); a whole table's, in its schema.
        raw = {**(schema.metadata or {}), **(footer.metadata or {})}
        facts = json.loads(raw[SHARD_METADATA_KEY])
        return ShardFile(facts=dict(facts), model=read_output_metadata(schema))
    except (OSError, pa.ArrowInvalid, KeyError, ValueError, TypeError):
        return None


def previous_spec(out: Location | Path | str) -> JobSpec:
    """The spec an earlier submission left in `out`, or ResumeError."""
    path = open_location(out) / JOB_FILE
    try:
        return JobSpec.model_validate_json(path.read_text())
    except FileNotFoundError:
        raise ResumeError(
            f"nothing to resume in {out}: no {JOB_FILE} (was it written by `m3pipe submit`?)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ResumeError(f"cannot read {path}: {exc}") from exc


def check_same_job(previous: JobSpec, current: JobSpec) -> None:
    """ResumeError naming every setting that differs from the earlier submission."""
    old, new = previous.model_dump(mode="json"), current.model_dump(mode="json")
    changed = [
        f"{name} {new[name]!r} (was {old[name]!r})"
        for name in SAME_ON_RESUME
        if old.get(name) != new.get(name)
    ]
    if changed:
        raise ResumeError(
            "--resume needs the same inputs and settings as the earlier submission "
            f"(job {previous.job_id}); changed: " + "; ".join(changed)
        )
