"""Opening input files as byte streams, decompressing .gz and .zst on the fly."""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import IO, cast

import pyarrow as pa

from pipeline.errors import InputError, UnreadableInput

COMPRESSED_SUFFIXES = (".gz", ".zst")
# Errors a damaged or truncated compressed stream raises part-way through.
STREAM_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, pa.ArrowInvalid)


def base_suffix(path: Path) -> str:
    """The suffix under any compression suffix: data.jsonl.zst -> .jsonl."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def check_readable_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"input file not found: {path}")
    if path.is_dir():
        raise InputError(f"input is a directory, expected a file: {path}")


def open_binary(path: Path) -> IO[bytes]:
    """A buffered byte stream of the file's (decompressed) content."""
    path = Path(path)
    check_readable_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".gz":
            return cast(IO[bytes], gzip.open(path, "rb"))
        if suffix == ".zst":
            stream = pa.input_stream(str(path), compression="zstd")
            return cast(IO[bytes], io.BufferedReader(stream, 1 << 20))
        return open(path, "rb")
    except OSError as exc:
        raise UnreadableInput(f"cannot open file: {exc.strerror or exc}") from exc
