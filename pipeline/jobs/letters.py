"""Letters: what is kept of a failed shard so that `m3pipe retry` can send it again (a dead
letter), and of a shard waiting for its next attempt, in case that retry is lost (a retry
letter). Both are made and read back the same way.

A shard by reference is a few hundred bytes: its message is kept in Redis as it is. A shard
that carries its documents (compressed, CSV or Parquet inputs, `--inline-shards`, rerank
pairs) can be megabytes; at a billion documents, 1% of shards failing would put gigabytes
of text into Redis. Such a message is written instead to the job's output directory,
`_letters/shard-NNNNNNN.json` (atomically, local or object store), and Redis keeps a
pointer with its digest. Where the output cannot be written (the reason the shard failed,
maybe), the message stays in Redis: bounded by the failed shards, never lost. The job's end
removes the letters of shards that finished after all.
"""

from __future__ import annotations

import hashlib
import json
import logging

from pydantic import ValidationError

from pipeline.errors import OutputDirError, PipelineError
from pipeline.jobs.store import JobStore
from pipeline.storage.location import Location
from pipeline.storage.output_dir import LETTERS_DIR
from schemas.job import ShardMessage, ShardState

log = logging.getLogger(__name__)

MAX_REDIS_LETTER_BYTES = 4096  # a shard by reference fits; one carrying text does not


class LetterLost(PipelineError):
    """A spilled dead letter is missing or not the message that was spilled."""


def letter_name(shard: int) -> str:
    return f"{LETTERS_DIR}/shard-{shard:07d}.json"


def make_letter(message: ShardMessage, out: Location | None) -> str:
    """What Redis keeps for a failed shard: its message, or a pointer to it in `out`."""
    raw = message.model_dump_json()
    if len(raw) <= MAX_REDIS_LETTER_BYTES or out is None:
        return raw
    name = letter_name(message.shard)
    try:
        (out / LETTERS_DIR).make_dir()
        (out / name).write_bytes(raw.encode("utf-8"))
    except (OSError, OutputDirError) as exc:
        log.warning("job %s shard %d: dead letter kept in Redis (%s)", message.job_id,
                    message.shard, exc)  # fmt: skip
        return raw
    return json.dumps({"spilled": name, "sha256": _digest(raw), "bytes": len(raw)})


def read_letter(letter: str, out: Location) -> ShardMessage:
    """The message a letter keeps (read back from `out` if it was spilled)."""
    data = json.loads(letter)
    if "spilled" not in data:
        return ShardMessage.model_validate(data)
    name = str(data["spilled"])
    if name.count("/") != 1 or not name.startswith(f"{LETTERS_DIR}/"):
        raise LetterLost(f"dead letter names {name!r}, not a letter of the output directory")
    try:
        raw = (out / name).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise LetterLost(f"dead letter {out / name} cannot be read: {exc}") from exc
    if _digest(raw) != data.get("sha256"):
        raise LetterLost(f"dead letter {out / name} is not the message that failed")
    try:
        return ShardMessage.model_validate_json(raw)
    except ValidationError as exc:
        raise LetterLost(f"dead letter {out / name} is not a shard message") from exc


def remove_finished_letters(store: JobStore, job_id: str, out: Location) -> int:
    """Delete the spilled letters of shards that are done after all (retried); the failed
    ones stay for `m3pipe retry`. A listing of the letters only: as many as failed shards."""
    removed = 0
    for name in (out / LETTERS_DIR).child_names("shard-*.json"):
        number = name.removeprefix("shard-").removesuffix(".json")
        if number.isdigit() and store.shard_state(job_id, int(number)) == ShardState.DONE:
            (out / LETTERS_DIR / name).delete()
            removed += 1
    return removed


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()
