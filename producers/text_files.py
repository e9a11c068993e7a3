"""A directory of .txt files: one document per file, id = path relative to the directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import InputError
from pipeline.storage import Location, open_location
from producers.validate import InputItem, record_to_document
from schemas.document import Reject

TEXT_SUFFIX = ".txt"


def text_files(root: Location) -> Iterator[Location]:
    """Every .txt file under `root`, in a stable order (sorted per directory, depth first)."""
    for location in root.walk_files():
        if location.name.lower().endswith(TEXT_SUFFIX):
            yield location


def read_text_dir(root: Location | Path | str, **_: object) -> Iterator[InputItem]:
    """Yield a Document or a Reject per .txt file (UTF-8; a BOM is dropped)."""
    directory = open_location(root)
    if not directory.is_dir():
        raise InputError(f"not a directory: {directory}")
    prefix = directory.path.rstrip("/") + "/"
    for location in text_files(directory):
        doc_id = location.path.removeprefix(prefix)
        source = location.uri
        try:
            raw = location.read_bytes()
        except OSError as exc:
            reason = f"unreadable file: {exc.strerror or exc}"
            yield InputItem(Reject(source=source, id=doc_id, reason=reason), file=source)
            continue
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            reason = f"invalid UTF-8 at byte {exc.start}"
            yield InputItem(Reject(source=source, id=doc_id, reason=reason), file=source)
            continue
        document = record_to_document({"id": doc_id, "text": text}, source=source)
        yield InputItem(document, file=source)
