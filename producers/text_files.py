"""A directory of .txt files: one document per file, id = path relative to the directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import InputError
from producers.validate import InputItem, record_to_document
from schemas.document import Reject

TEXT_SUFFIX = ".txt"


def text_files(root: Path) -> Iterator[Path]:
    """Every .txt file under `root`, in a stable order (sorted per directory, depth first)."""
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            if name.lower().endswith(TEXT_SUFFIX):
                yield Path(directory) / name


def read_text_dir(root: Path, **_: object) -> Iterator[InputItem]:
    """Yield a Document or a Reject per .txt file (UTF-8; a BOM is dropped)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"not a directory: {root}")
    for path in text_files(root):
        doc_id = path.relative_to(root).as_posix()
        source = str(path)
        try:
            raw = path.read_bytes()
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
