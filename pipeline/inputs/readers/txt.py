"""A directory of .txt files: one document per file, id = path relative to the directory.

The walk never leaves the directory: symbolic links are not followed (a link named *.txt
or pointing at a directory is reported as a reject), so a link loop or a link out of the
root cannot add documents, and every real file is read once. Only regular files are read
(a FIFO would block forever), each at most --max-record-bytes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import InputError
from pipeline.inputs.readers.lines import DEFAULT_MAX_RECORD_BYTES, oversize_reason
from pipeline.inputs.validate import InputItem, RecordShape, record_to_document
from pipeline.storage.location import Location, open_location
from schemas.document import Reject

TEXT_SUFFIX = ".txt"


def _is_text_name(name: str) -> bool:
    return name.lower().endswith(TEXT_SUFFIX)


def text_files(root: Location) -> Iterator[tuple[Location, str | None]]:
    """Every .txt file under `root` with None, or a skipped entry with the reason, in a
    stable order (sorted per directory, depth first)."""
    if not root.is_local:  # an object store has no links and only plain objects
        for location in root.walk_files():
            if _is_text_name(location.name):
                yield location, None
        return
    yield from _walk_local(root)


def _walk_local(directory: Location) -> Iterator[tuple[Location, str | None]]:
    try:
        entries = sorted(os.scandir(directory.path), key=lambda entry: entry.name)
    except OSError as exc:
        yield directory, f"unreadable directory: {exc.strerror or exc}"
        return
    subdirs = []
    for entry in entries:
        location = directory / entry.name
        if entry.is_symlink():
            if _is_text_name(entry.name) or os.path.isdir(entry.path):
                yield location, "symbolic link, not followed (inputs never leave their root)"
        elif entry.is_dir(follow_symlinks=False):
            subdirs.append(location)
        elif _is_text_name(entry.name):
            mode = entry.stat(follow_symlinks=False).st_mode
            yield location, None if stat.S_ISREG(mode) else "not a regular file"
    for sub in subdirs:
        yield from _walk_local(sub)


def read_text_dir(
    path: Location | Path | str,
    *,
    id_field: str = "id",
    text_field: str = "text",
    keep_fields: tuple[str, ...] = (),
    shape: RecordShape | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
) -> Iterator[InputItem]:
    """Yield a Document or a Reject per .txt file (UTF-8; a BOM is dropped). A reader like
    the others (readers/formats.py), but no field is read: a file's id is its path under
    the directory, its text the whole file."""
    directory = open_location(path)
    if not directory.is_dir():
        raise InputError(f"not a directory: {directory}")
    prefix = directory.path.rstrip("/") + "/"
    for location, skipped in text_files(directory):
        doc_id = location.path.removeprefix(prefix)
        source = location.uri
        text, reason = (None, skipped) if skipped else _read_text(location, max_record_bytes)
        if text is None:
            reject = Reject(source=source, id=doc_id, reason=reason or "unreadable file")
            yield InputItem(reject, file=source)
            continue
        document = record_to_document({"id": doc_id, "text": text}, source=source)
        yield InputItem(document, file=source)


def _read_text(location: Location, limit: int) -> tuple[str | None, str | None]:
    """The file's text, or None and why not; never more than `limit` bytes are read."""
    try:
        with location.open_input() as handle:
            raw = handle.read(limit + 1)
        if len(raw) > limit:
            return None, oversize_reason(location.size(), limit)
    except OSError as exc:
        return None, f"unreadable file: {exc.strerror or exc}"
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}"
