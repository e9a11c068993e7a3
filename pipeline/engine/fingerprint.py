"""A model directory's identity: a digest of every byte of every file the loaders read.

Outputs, `--reuse`, search and the workers' per-part checks compare fingerprints to decide
that two sets of vectors came from the same weights, so a fingerprint must change when any
byte changes (a weight file replaced in place by one of the same size included).

Hashing bge-m3's 2.3 GB of weights costs about two seconds, once: a file's digest is kept
in the cache directory under its stat identity (real path, inode, size, mtime and
ctime, all in nanoseconds where the filesystem has them). Any write to the file changes its
ctime, which no user call can set back, so a stale digest is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

FINGERPRINT_CHARS = 16
_CHUNK = 8 << 20
_CACHE_FOLDER = "fingerprints"
_memo: dict[str, str] = {}
_memo_lock = threading.Lock()


def fingerprint_model_dir(path: Path, cache_dir: Path | None = None) -> str:
    """The digest of the directory's regular files (top level, as the loaders read them):
    names and full contents, in name order. `cache_dir` keeps file digests across runs."""
    digest = hashlib.sha256()
    for item in sorted(Path(path).iterdir()):
        if not item.is_file():
            continue
        digest.update(item.name.encode())
        digest.update(b"\0")
        digest.update(file_digest(item, cache_dir).encode())
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def file_digest(path: Path, cache_dir: Path | None = None) -> str:
    """sha256 of the file's bytes, from this process's memo or the cache when the file's
    stat identity is unchanged, else read whole (and remembered)."""
    key = _stat_key(path)
    with _memo_lock:
        known = _memo.get(key)
    if known is not None:
        return known
    cached = _cache_file(cache_dir, key)
    known = _read_cached(cached, key)
    if known is None:
        with open(path, "rb") as handle:
            known = hashlib.file_digest(handle, "sha256").hexdigest()
        _write_cached(cached, key, known)
    with _memo_lock:
        _memo[key] = known
    return known


def _stat_key(path: Path) -> str:
    real = os.path.realpath(path)
    st = os.stat(real)
    return json.dumps(
        [real, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns],
        separators=(",", ":"),
    )


def _cache_file(cache_dir: Path | None, key: str) -> Path | None:
    if cache_dir is None:
        return None
    name = hashlib.sha256(key.encode()).hexdigest()[:32]
    return Path(cache_dir) / _CACHE_FOLDER / f"{name}.json"


def _read_cached(cached: Path | None, key: str) -> str | None:
    if cached is None:
        return None
    try:
        record = json.loads(cached.read_text())
    except (OSError, ValueError):
        return None
    # The key is stored in full: a file name collision can never pass for a match.
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    value = record.get("sha256")
    return value if isinstance(value, str) and len(value) == 64 else None


def _write_cached(cached: Path | None, key: str, value: str) -> None:
    """Best effort: a read-only cache costs a re-hash next time, nothing else."""
    if cached is None:
        return
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"key": key, "sha256": value}))
        os.replace(temporary, cached)
    except OSError:
        pass
