"""Where each key (a document id, a pair) was first seen: on disk, memory bounded.

The duplicate policies ("the first record wins, later ones are rejected naming the first")
need every key seen so far. A dict of them costs ~190 bytes per document: 190 GB at 10^9.
The keys live instead in a throwaway RocksDB (producers/inputs/scratch_db.py): memory is
bounded, the rest is on disk (~13-25 bytes per key after compression).
"""

from __future__ import annotations

from pathlib import Path

from producers.inputs.scratch_db import WRITE_BUFFER_BYTES, ScratchDb, ScratchIndex


class FirstSeen(ScratchIndex):
    """`first(key, where)`: None the first time a key is offered (it is remembered with
    `where`), else the `where` it was first offered with. Use as a context manager: the
    index is deleted on exit."""

    def __init__(
        self, parent: Path | str | None = None, write_buffer_bytes: int = WRITE_BUFFER_BYTES
    ) -> None:
        self._scratch = ScratchDb("m3pipe-first-seen-", parent, write_buffer_bytes)

    def first(self, key: str, where: str) -> str | None:
        db = self._scratch.db
        raw = key.encode("utf-8", "surrogatepass")
        found = db.get(raw)
        if found is None:
            db.put(raw, where.encode("utf-8", "surrogatepass"))
            return None
        return bytes(found).decode("utf-8", "surrogatepass")

    @property
    def directory(self) -> Path:
        return self._scratch.directory
