"""`--reuse`: the previous output's documents by id, on disk, and each shard's copy plan.

The index holds, per document of the previous output, its part, first row, row count and
text digest (32 bytes a value): in a scratch RocksDB, so the producer's memory does not grow
with the previous output either. A shard's plan is the runs of its documents whose id and
digest both match (schemas/reuse_plan.py).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import ReuseError
from pipeline.inputs.indexes.scratch_db import ScratchDb, ScratchIndex
from pipeline.storage.finished_output import FinishedOutput, document_digest, open_for_reuse
from pipeline.storage.location import Location, open_location, same_place
from schemas.document import Document
from schemas.options import STORAGE_FIELDS, EncodeOptions
from schemas.reuse_plan import ReuseRun

_VALUE = struct.Struct("<IQI")  # part, first row, rows; the digest follows
_WRITE_BATCH = 10_000


def open_reusable(
    previous_out: Location | Path | str,
    out: Location | Path | str,
    model: str,
    options: EncodeOptions,
    keep_fields: Sequence[str],
) -> FinishedOutput:
    """The previous output of `--reuse`, once it is sure to hold rows of this model and
    options (ReuseError naming what differs). The model's exact identity (revision, weights
    fingerprint, compute precision) is known once a worker loads it: workers check it per
    shard and encode what they cannot copy."""
    previous = open_for_reuse(previous_out)
    if same_place(previous.location, open_location(out)):
        raise ReuseError("--reuse needs another output directory than --out")
    # An output from before an option existed was made with its default.
    defaults = EncodeOptions().model_dump(mode="json")
    old = {**defaults, **previous.options, "model": previous.identity.get("model")}
    new = {**options.model_dump(mode="json"), "model": model}
    names = ("model", "modes", "dtype", "max_length", "long_docs", "chunk_overlap")
    changed = [
        f"{name} {new.get(name)!r} (was {old.get(name)!r})"
        for name in (*names, *STORAGE_FIELDS)
        if old.get(name) != new.get(name)
    ]
    if previous.keep_fields != list(keep_fields):
        changed.append(f"kept fields {list(keep_fields)} (was {previous.keep_fields})")
    if changed:
        raise ReuseError(f"--reuse {previous.location} was made otherwise: " + "; ".join(changed))
    return previous


class ReuseIndex(ScratchIndex):
    """Use as a context manager: the index is deleted on exit."""

    def __init__(self, previous: FinishedOutput, parent: Path | str | None = None) -> None:
        self.previous = previous
        self.indexed = 0  # documents of the previous output
        self.matched = 0  # documents planned whose id the previous output has
        self.reused = 0  # ... whose text digest matches too: their rows are copied
        self._scratch = ScratchDb("m3pipe-reuse-", parent)
        try:
            self._build()
        except BaseException:
            self._scratch.close()
            raise

    def _build(self) -> None:
        pending: list[tuple[bytes, bytes]] = []
        for doc_id, part, row, rows, digest in self.previous.entries():
            pending.append((doc_id.encode("utf-8"), _VALUE.pack(part, row, rows) + digest))
            if len(pending) >= _WRITE_BATCH:
                self._scratch.write(pending)
                self.indexed += len(pending)
                pending = []
        if pending:
            self._scratch.write(pending)
            self.indexed += len(pending)

    @property
    def dropped(self) -> int:
        """Documents of the previous output no planned document has the id of (so far)."""
        return self.indexed - self.matched

    def plan(self, docs: Sequence[Document], keep_fields: Sequence[str] = ()) -> list[ReuseRun]:
        """The runs of `docs` (a shard, in order) whose rows can be copied; counts them."""
        db = self._scratch.db
        runs: list[list[int]] = []  # [at, count, part, row, rows]
        for at, doc in enumerate(docs):
            found = db.get(doc.id.encode("utf-8"))
            if found is None:
                continue
            self.matched += 1
            value = bytes(found)
            if value[_VALUE.size :] != document_digest(doc, keep_fields):
                continue  # changed: encoded again
            self.reused += 1
            part, row, rows = _VALUE.unpack_from(value)
            last = runs[-1] if runs else None
            if last and last[0] + last[1] == at and last[2] == part and last[3] + last[4] == row:
                last[1] += 1
                last[4] += rows
            else:
                runs.append([at, 1, part, row, rows])
        return [ReuseRun(at=a, count=c, part=p, row=r, rows=n) for a, c, p, r, n in runs]
