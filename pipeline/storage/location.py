"""Where inputs are read and output is written: a local path or an object-store URL.

`open_location("s3://bucket/prefix")` or `open_location("out/dir")` gives a Location: a
filesystem (pyarrow.fs, or any fsspec one wrapped for pyarrow) and a path on it. Local
writes keep the temp-file-and-rename commit (pipeline/storage/local_commit.py);
object-store writes are one put of bytes built in full beforehand, so an object appears
whole under its name or not at all.

Credentials never travel in a URL: the output URL is stored in Redis, in `_job.json` and
in logs, so keys come from the environment (AWS_ACCESS_KEY_ID, AWS_PROFILE, an instance
or pod role, ...). A custom endpoint comes from AWS_ENDPOINT_URL or `?endpoint_override=`.
Which filesystem serves a URL: pipeline/storage/filesystems.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import StorageError
from pipeline.storage.filesystems import MAX_ERROR_CHARS, filesystem_of, refuse_secrets, shortened
from pipeline.storage.local_commit import write_local_atomic
from pipeline.storage.s3_listing import paged_s3_client, s3_file_names

P = ParamSpec("P")
T = TypeVar("T")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
UPLOAD_CHUNK_BYTES = 8 << 20  # what `upload` holds at a time


def is_url(target: str | os.PathLike[str]) -> bool:
    return isinstance(target, str) and bool(_URL.match(target))


@dataclass(frozen=True)
class Location:
    """A file or directory on some filesystem. `uri` is what users see and jobs store."""

    fs: pafs.FileSystem
    path: str  # the path on `fs` (for S3: bucket/key)
    uri: str  # an absolute local path, or the URL without a trailing slash
    query: str = ""  # a URL's options, kept so a stored `uri` reopens the same store

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.path)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        """`uri` with its options: what reopens this location in another process."""
        return f"{self.uri}?{self.query}" if self.query else self.uri

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, name: str) -> Location:
        """The child `name`, a relative path whose parts are plain names (no '..')."""
        parts = name.split("/")
        if not name or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"not a plain relative name: {name!r}")
        path = f"{self.path.rstrip('/')}/{name}"
        return Location(self.fs, path, f"{self.uri}/{name}", self.query)

    def _info(self) -> pafs.FileInfo:
        return _guard(self, self.fs.get_file_info, self.path)

    def probe(self) -> pafs.FileType:
        """What is at this location, for the checks a command makes before it starts.

        An unreachable store or a refused request is a StorageError there: a clear message
        at once, not a traceback. (A worker's later I/O errors stay OSErrors: retried.)
        """
        try:
            return self._info().type
        except OSError as exc:
            raise StorageError(f"cannot reach {self.uri}: {shortened(exc)}") from exc

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def size(self) -> int:
        info = self._info()
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"not a file: {self.uri}")
        return int(info.size)

    def child_names(self, pattern: str = "*") -> Iterator[str]:
        """Names of the files directly in this directory that match `pattern`, unsorted,
        in constant memory: a local directory is read as it goes, S3 a page of keys at a
        time (with boto3, pipeline/storage/s3_listing.py). Other object stores' listings
        come whole from pyarrow (~400 bytes per file while it is held)."""
        if self.is_local:
            return _local_file_names(Path(self.path), pattern)
        if isinstance(self.fs, pafs.S3FileSystem):
            client = paged_s3_client(self.query, self.fs.region)
            if client is not None:
                return s3_file_names(client, self.path, pattern)
        return self._listed_names(pattern)

    def children(self, pattern: str = "*") -> list[Location]:
        """The files directly in this directory whose names match `pattern`, sorted."""
        return [self / name for name in sorted(self._listed_names(pattern))]

    def _listed_names(self, pattern: str) -> Iterator[str]:
        """pyarrow's listing of the files directly in this directory matching `pattern`."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        for info in _guard(self, self.fs.get_file_info, selector):
            if info.type == pafs.FileType.File and fnmatchcase(info.base_name, pattern):
                yield info.base_name

    def walk_files(self) -> Iterator[Location]:
        """Every file under this directory, depth first: a directory's files (sorted),
        then its subdirectories (sorted)."""
        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        infos = sorted(_guard(self, self.fs.get_file_info, selector), key=lambda i: i.base_name)
        dirs = []
        for info in infos:
            if info.type == pafs.FileType.File:
                yield self / info.base_name
            elif info.type == pafs.FileType.Directory:
                dirs.append(self / info.base_name)
        for sub in dirs:
            yield from sub.walk_files()

    def delete(self) -> None:
        """Remove this file; a missing one is fine."""
        with contextlib.suppress(FileNotFoundError):
            _guard(self, self.fs.delete_file, self.path)

    def read_bytes(self) -> bytes:
        with self.open_input() as handle:
            return handle.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def open_input(self) -> IO[bytes]:
        """A sequential, buffered byte stream of the file."""
        if self.is_local:
            return open(self.path, "rb")
        stream = _guard(self, self.fs.open_input_stream, self.path)
        return cast(IO[bytes], io.BufferedReader(cast(io.RawIOBase, stream), 1 << 20))

    def open_range(self, start: int, end: int) -> IO[bytes]:
        """A buffered byte stream of bytes [start, end) of the file (a ranged read on an
        object store: only those bytes travel)."""
        handle: Any = open(self.path, "rb") if self.is_local else self.open_random_access()  # noqa: SIM115
        try:
            handle.seek(start)
        except BaseException:
            handle.close()
            raise
        return io.BufferedReader(_Window(handle, end - start), 1 << 20)

    def open_random_access(self) -> pa.NativeFile:
        """A seekable handle (Parquet reads its footer first)."""
        return _guard(self, self.fs.open_input_file, self.path)

    def make_dir(self) -> None:
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)
        # Object stores have no directories: a prefix exists once an object is under it.

    def write_bytes(self, data: bytes | pa.Buffer) -> None:
        """Commit `data` under this name atomically: whole or not at all."""
        if self.is_local:
            write_local_atomic(Path(self.path), data)
            return
        # Everything is handed over in one write: the stream is never closed (which
        # commits the object) after a partial write of ours, only after a failed upload,
        # which the store does not commit.
        with _guard(self, self.fs.open_output_stream, self.path) as stream:
            stream.write(data)

    def upload(self, source: IO[bytes]) -> None:
        """Commit the rest of `source` under this name on an object store, streamed
        UPLOAD_CHUNK_BYTES at a time (memory does not grow with the file): whole or not at
        all. (A local file is written in place, then renamed, by its writer.)"""
        if self.is_local:
            raise ValueError(f"{self.uri} is local: write it in place")
        try:
            with _guard(self, self.fs.open_output_stream, self.path) as stream:
                while chunk := source.read(UPLOAD_CHUNK_BYTES):
                    stream.write(chunk)
        except BaseException:
            # Closing the stream commits what it was given (pyarrow cannot abort an
            # upload), so a read of `source` that failed partway would leave part of it
            # visible: it is deleted. A failed upload commits nothing to delete.
            with contextlib.suppress(OSError):
                self.delete()
            raise


def _local_file_names(directory: Path, pattern: str) -> Iterator[str]:
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if fnmatchcase(entry.name, pattern) and entry.is_file(follow_symlinks=False):
                    yield entry.name
    except FileNotFoundError:
        return


class _Window(io.RawIOBase):
    """At most `size` bytes of a seekable handle, from where it stands."""

    def __init__(self, handle: Any, size: int) -> None:
        self._handle = handle
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._left)
        if want <= 0:
            return 0
        data = self._handle.read(want)
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
        super().close()


def open_location(target: str | os.PathLike[str] | Location) -> Location:
    """A Location for a local path (made absolute) or a URL (s3://, gs://, abfs://, ...)."""
    if isinstance(target, Location):
        return target
    text = os.fspath(target)
    if not is_url(text):
        absolute = os.path.abspath(text)
        return Location(pafs.LocalFileSystem(), absolute, absolute)
    parts = urlsplit(text)
    if parts.scheme == "file":
        absolute = os.path.abspath(parts.path)
        return Location(pafs.LocalFileSystem(), absolute, absolute)
    refuse_secrets(text)
    base = text.split("?", 1)[0].rstrip("/")
    fs, path = filesystem_of(base, parts.query)
    return Location(fs, path.rstrip("/"), base, parts.query)


def same_place(first: Location, second: Location) -> bool:
    """Whether two locations name the same directory or file: local ones by their real
    paths (a link to a directory is that directory), others by URI."""
    if first.is_local and second.is_local:
        return os.path.realpath(first.local_path) == os.path.realpath(second.local_path)
    return first.uri == second.uri


def _guard(location: Location, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a filesystem call; long storage errors are cut to a readable length."""
    try:
        return call(*args, **kwargs)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if len(str(exc)) <= MAX_ERROR_CHARS:
            raise
        raise OSError(exc.errno, f"{location.uri}: {shortened(exc)}") from exc
