"""The producer's scratch index where TMPDIR is hostile (issue 28, item 7): full, missing or
not a directory. One error naming the place and what to do; nothing left behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pipeline.errors import ScratchSpaceError
from pipeline.inputs.indexes.scratch_db import ScratchDb


def test_a_full_disk_under_the_scratch_index_is_one_error_and_leaves_nothing(tmp_path):
    """A real full disk: every file of the process capped at 16 KiB (RLIMIT_FSIZE), so
    RocksDB's first flush of a 64 KiB memtable fails with EFBIG."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from pipeline.inputs.indexes.scratch_db import ScratchDb
        from pipeline.errors import ScratchSpaceError
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
        try:
            db = ScratchDb("t-", {str(tmp_path)!r}, write_buffer_bytes=65536)
            try:
                for i in range(400):
                    db.write([(f"k{{i}}-{{j}}".encode(), b"v" * 100) for j in range(100)])
            finally:
                db.close()
        except ScratchSpaceError as exc:
            print(exc)
            sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"the scratch index in {tmp_path} failed to write" in proc.stdout
    assert "set TMPDIR to a directory on a disk with room" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # its directory removed


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_a_tmpdir_that_is_not_a_writable_directory_is_refused(tmp_path, monkeypatch, kind):
    target = tmp_path / "scratch"
    if kind == "a file":
        target.write_text("not a directory")
    monkeypatch.setenv("TMPDIR", str(target))
    with pytest.raises(ScratchSpaceError, match=r"TMPDIR=.* is not a writable directory"):
        ScratchDb("t-")


def test_an_explicit_parent_is_used_as_given(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))
    db = ScratchDb("t-", tmp_path)
    assert db.directory.parent == tmp_path
    db.close()
    assert not db.directory.exists()
