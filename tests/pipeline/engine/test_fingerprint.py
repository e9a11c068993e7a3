"""A model's fingerprint follows every byte of its files (issue 28, item 1): weights replaced
in place by others of the same size make a new identity, and `--reuse` refuses the old rows."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pipeline.engine import fingerprint
from pipeline.engine.embedder import EmbedEngine
from pipeline.engine.fingerprint import fingerprint_model_dir
from pipeline.engine.model import load_model
from pipeline.errors import ReuseError
from pipeline.local.process import process_file
from pipeline.tasks import task_kind
from schemas.job import Task
from tests.pipeline.runtime.test_reuse import OPTIONS, corpus, write


def flip_middle_byte(path: Path) -> None:
    """One byte in the middle of the file changed in place: same size, same inode."""
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture
def model_copy(tmp_path, tiny) -> Path:
    copy = tmp_path / "mY"
    shutil.copytree(tiny.path, copy)
    return copy


def test_one_flipped_weight_byte_changes_the_fingerprint(model_copy, tmp_path):
    cache = tmp_path / "cache"
    before = fingerprint_model_dir(model_copy, cache)
    assert fingerprint_model_dir(model_copy, cache) == before  # stable
    weights = model_copy / "model.safetensors"
    stat = weights.stat()
    flip_middle_byte(weights)
    # Even with the size and mtime put back as they were (cp -p, rsync -t), the identity moves.
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert weights.stat().st_size == stat.st_size
    assert fingerprint_model_dir(model_copy, cache) != before


def test_file_digests_are_cached_and_a_forged_cache_entry_is_ignored(model_copy, tmp_path):
    cache = tmp_path / "cache"
    first = fingerprint_model_dir(model_copy, cache)
    entries = list((cache / "fingerprints").iterdir())
    assert len(entries) == len([p for p in model_copy.iterdir() if p.is_file()])
    fingerprint._memo.clear()
    for entry in entries:  # a cache of garbage is read as no cache
        entry.write_text('{"key": "another file", "sha256": "0"}')
    assert fingerprint_model_dir(model_copy, cache) == first
    # Read from the cache (not re-hashed) when the files are unchanged: a wrong cached
    # digest of the same key would show, so write one and see it used.
    fingerprint._memo.clear()
    weights = model_copy / "model.safetensors"
    key = fingerprint._stat_key(weights)
    cached = fingerprint._cache_file(cache, key)
    assert cached is not None
    fingerprint._write_cached(cached, key, "f" * 64)
    assert fingerprint_model_dir(model_copy, cache) != first
    fingerprint._memo.clear()


def test_reuse_refuses_rows_of_weights_changed_in_place(model_copy, tmp_path, model_cache):
    """The issue's probe: encode with mY, replace its weights by bytes of the same size,
    encode again with --reuse of the first output: refused, not 'all reused'."""
    embed = task_kind(Task.EMBED)
    records = corpus(12)

    def run(name: str, reuse: Path | None = None):
        model = load_model(str(model_copy), device="cpu", precision="fp32", cache_dir=model_cache)
        source = write(tmp_path / f"{name}.jsonl", records)
        engine = EmbedEngine(model, OPTIONS)
        return process_file(embed, source, tmp_path / name, engine, reuse=reuse)

    run("A")
    flip_middle_byte(model_copy / "model.safetensors")
    with pytest.raises(ReuseError, match="model_fingerprint"):
        run("C", reuse=tmp_path / "A")
