"""Opening input files as byte streams, decompressing .gz and .zst on the fly."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, cast

import pyarrow as pa

from pipeline.errors import InputError, UnreadableInput
from pipeline.storage.location import Location, open_location

COMPRESSED_SUFFIXES = (".gz", ".zst")
# Decompressed bytes read ahead. Small, so that the records before damage in a truncated
# stream are still delivered: what is lost is at most this plus one compressed block.
_DECOMPRESSED_BUFFER = 16 * 1024
# Errors a damaged or truncated compressed stream raises part-way through.
STREAM_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, pa.ArrowInvalid)


def base_suffix(name: str | Path) -> str:
    """The suffix under any compression suffix: data.jsonl.zst -> .jsonl."""
    suffixes = [s.lower() for s in PurePosixPath(str(name)).suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def is_compressed(location: Location) -> bool:
    return PurePosixPath(location.name).suffix.lower() in COMPRESSED_SUFFIXES


class _GzipReader(gzip.GzipFile):
    """A GzipFile that closes the stream it reads, as a file it opened itself would."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def check_readable_file(location: Location) -> None:
    if location.is_dir():
        raise InputError(f"input is a directory, expected a file: {location}")
    if not location.exists():
        raise InputError(f"input file not found: {location}")


def open_binary(path: Location | Path | str) -> IO[bytes]:
    """A buffered byte stream of the file's (decompressed) content."""
    location = open_location(path)
    check_readable_file(location)
    suffix = PurePosixPath(location.name).suffix.lower()
    try:
        raw = location.open_input()
        if suffix == ".gz":
            return cast(IO[bytes], _GzipReader(raw))
        if suffix == ".zst":  # closing the decompressor closes `raw` too
            stream = pa.CompressedInputStream(raw, "zstd")
            return cast(
                IO[bytes], io.BufferedReader(cast(io.RawIOBase, stream), _DECOMPRESSED_BUFFER)
            )
        return raw
    except OSError as exc:
        raise UnreadableInput(f"cannot open file: {exc.strerror or exc}") from exc
