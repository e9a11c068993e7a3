"""Where each key (a document id, a pair) was first seen: on disk, memory bounded.

The duplicate policies ("the first record wins, later ones are rejected naming the first")
need every key seen so far. A dict of them costs ~190 bytes per document: 190 GB at 10^9.
The keys live instead in a throwaway RocksDB (pipeline/inputs/indexes/scratch_db.py): memory is
bounded, the rest is on disk (~13-25 bytes per key after compression).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from pipeline.inputs.indexes.scratch_db import WRITE_BUFFER_BYTES, ScratchDb, ScratchIndex


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

    def first_many(self, keys: list[str], wheres: list[str]) -> list[str | None]:
        """`first` for each key in turn (a key repeated among them is found at its first
        place), with one lookup and one write for them all: ~2x faster a key."""
        raw = [key.encode("utf-8", "surrogatepass") for key in keys]
        # One multi-get (rocksdict's stub types the list argument too narrowly).
        stored = cast(list[bytes | None], self._scratch.db.get(cast(list[Any], raw)))
        new: dict[bytes, bytes] = {}
        answers: list[str | None] = []
        for key, where, found in zip(raw, wheres, stored, strict=True):
            if found is None:
                found = new.get(key)
                if found is None:
                    new[key] = where.encode("utf-8", "surrogatepass")
                    answers.append(None)
                    continue
            answers.append(bytes(found).decode("utf-8", "surrogatepass"))
        if new:
            self._scratch.write(list(new.items()))
        return answers

    @property
    def directory(self) -> Path:
        return self._scratch.directory
