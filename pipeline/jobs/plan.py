"""A queue job's shard plan: every message the producer sent, kept in the output directory
(`_plan/plan-NNNNN.jsonl`, PLAN_CHUNK shards a file), so that `m3pipe repair` can send
again exactly the shards Redis lost (a failover that dropped the last writes, an eviction)
without cutting the inputs again: at 10^9 documents, recovery costs the missing shards,
not the job.

A shard sent by reference (byte ranges of the inputs) is a few hundred bytes and is kept as
sent; on disk that is ~300 bytes a shard, ~3 MB for 10,000 shards. A shard that carries its
documents (compressed, CSV or Parquet inputs, `--inline-shards`, rerank pairs) is not
copied into the plan (it would double the input): its line says so, and such a shard, if
lost, is recovered by `submit --resume`. A chunk is written whole (atomically) once its
last shard is sent, and the last at the end of the submission; the plan is removed when the
job ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pydantic import ValidationError

from pipeline.storage.location import Location
from pipeline.storage.output_dir import PLAN_DIR
from schemas.job import ShardMessage

PLAN_CHUNK = 4096  # shards a plan file
# A chunk is ~1.2 MB of messages by reference: a file far larger was not written by m3pipe
# and is not read (its shards are recovered as unplanned ones).
MAX_CHUNK_BYTES = 64 << 20


def chunk_name(chunk: int) -> str:
    return f"plan-{chunk:05d}.jsonl"


class PlanWriter:
    """Collects the messages of one chunk at a time (shards come in order)."""

    def __init__(self, out: Location) -> None:
        self.out = out
        self._chunk: int | None = None
        self._lines: list[str] = []

    def add(self, message: ShardMessage) -> None:
        chunk = message.shard // PLAN_CHUNK
        if self._chunk is not None and chunk != self._chunk:
            self.flush()
        self._chunk = chunk
        if message.ref is not None:
            self._lines.append(message.model_dump_json())
        else:  # carries its documents: not copied
            self._lines.append(json.dumps({"shard": message.shard, "carried": True}))

    def flush(self) -> None:
        if self._chunk is None or not self._lines:
            return
        (self.out / PLAN_DIR).make_dir()
        data = ("\n".join(self._lines) + "\n").encode("utf-8")
        (self.out / PLAN_DIR / chunk_name(self._chunk)).write_bytes(data)
        self._lines = []


class PlanReader:
    """The planned message of a shard, reading one chunk file at a time."""

    def __init__(self, out: Location) -> None:
        self.out = out
        self._chunk: int | None = None
        self._messages: dict[int, str | None] = {}

    def message(self, shard: int) -> ShardMessage | None:
        """The message shard `shard` was sent as; None if the plan does not hold it (a
        shard that carried its documents, or no plan)."""
        chunk = shard // PLAN_CHUNK
        if chunk != self._chunk:
            self._messages = dict(self._read(chunk))
            self._chunk = chunk
        raw = self._messages.get(shard)
        if raw is None:
            return None
        try:
            return ShardMessage.model_validate_json(raw)
        except ValidationError:
            return None  # a damaged line: that shard is recovered as an unplanned one

    def _read(self, chunk: int) -> Iterator[tuple[int, str | None]]:
        path = self.out / PLAN_DIR / chunk_name(chunk)
        if not path.exists() or path.size() > MAX_CHUNK_BYTES:
            return
        for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                shard = int(entry["shard"])
            except (ValueError, KeyError, TypeError):
                continue
            yield shard, None if entry.get("carried") else line
