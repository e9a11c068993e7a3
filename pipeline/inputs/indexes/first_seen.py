"""Where each key (a document id, a pair) was first seen: on disk, memory bounded.

The duplicate policies ("the first record wins, later ones are rejected naming the first")
need every key seen so far. A dict of them costs ~190 bytes per document: 190 GB at 10^9.
The keys live instead in a throwaway RocksDB (pipeline/inputs/indexes/scratch_db.py): memory is
bounded, the rest is on disk (~13-25 bytes per key after compression). The first
MEMORY_KEYS keys are kept in a dict (~10 MB at most): a RocksDB costs ~8 ms to create and
remove (its files are synced to disk), more than a small job's whole intake, and most
jobs of a small corpus, and every test's, never reach the disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from pipeline.inputs.indexes.scratch_db import (
    WRITE_BUFFER_BYTES,
    ScratchDb,
    ScratchIndex,
    scratch_parent,
)

MEMORY_KEYS = 50_000  # keys held in a dict before the index moves to a RocksDB


class FirstSeen(ScratchIndex):
    """`first(key, where)`: None the first time a key is offered (it is remembered with
    `where`), else the `where` it was first offered with. Use as a context manager: the
    index is deleted on exit."""

    def __init__(
        self,
        parent: Path | str | None = None,
        write_buffer_bytes: int = WRITE_BUFFER_BYTES,
        memory_keys: int | None = None,
    ) -> None:
        self._parent = scratch_parent(parent)  # a TMPDIR that cannot hold it: refused now
        self._write_buffer_bytes = write_buffer_bytes
        self._memory_keys = MEMORY_KEYS if memory_keys is None else memory_keys
        self._memory: dict[bytes, bytes] | None = {}  # None once on disk, or closed
        self._on_disk: ScratchDb | None = None  # None before the move, or closed
        if self._memory_keys == 0:
            self._move_to_disk()

    def first(self, key: str, where: str) -> str | None:
        raw = key.encode("utf-8", "surrogatepass")
        if self._memory is not None:
            found = self._memory.get(raw)
            if found is not None:
                return _text(found)
            self._memory[raw] = where.encode("utf-8", "surrogatepass")
            if len(self._memory) > self._memory_keys:
                self._move_to_disk()
            return None
        db = self._disk().db
        found = db.get(raw)
        if found is None:
            db.put(raw, where.encode("utf-8", "surrogatepass"))
            return None
        return _text(found)

    def first_many(self, keys: list[str], wheres: list[str]) -> list[str | None]:
        """`first` for each key in turn (a key repeated among them is found at its first
        place), with one lookup and one write for them all: ~2x faster a key."""
        if self._memory is not None:  # a dict's lookups cost less than batching them
            return [self.first(key, where) for key, where in zip(keys, wheres, strict=True)]
        raw = [key.encode("utf-8", "surrogatepass") for key in keys]
        # One multi-get (rocksdict's stub types the list argument too narrowly).
        stored = cast(list[bytes | None], self._disk().db.get(cast(list[Any], raw)))
        new: dict[bytes, bytes] = {}
        answers: list[str | None] = []
        for key, where, found in zip(raw, wheres, stored, strict=True):
            if found is None:
                found = new.get(key)
                if found is None:
                    new[key] = where.encode("utf-8", "surrogatepass")
                    answers.append(None)
                    continue
            answers.append(_text(found))
        if new:
            self._disk().write(list(new.items()))
        return answers

    @property
    def directory(self) -> Path | None:
        """The RocksDB's directory; None while the keys are all in memory."""
        return None if self._on_disk is None else self._on_disk.directory

    def close(self) -> None:
        on_disk, self._on_disk, self._memory = self._on_disk, None, None
        if on_disk is not None:
            on_disk.close()

    def _move_to_disk(self) -> None:
        """The keys so far into a RocksDB, and every key after them there."""
        assert self._memory is not None
        scratch = ScratchDb("m3pipe-first-seen-", self._parent, self._write_buffer_bytes)
        try:
            if self._memory:
                scratch.write(list(self._memory.items()))
        except BaseException:
            scratch.close()
            raise
        self._on_disk, self._memory = scratch, None

    def _disk(self) -> ScratchDb:
        if self._on_disk is None:  # neither in memory nor on disk
            raise ValueError("the first-seen index is closed")
        return self._on_disk


def _text(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "surrogatepass")
