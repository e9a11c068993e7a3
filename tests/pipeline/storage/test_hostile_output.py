"""Output directories under hostile conditions: a full disk, bad --out values, a directory
of someone else's files (issue 14)."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys

import pytest

from pipeline.cli.main import main
from pipeline.errors import OutputDirError
from pipeline.exit_codes import EXIT_FAILED, EXIT_USAGE
from pipeline.storage.output_dir import RejectLog, prepare_output_dir
from schemas.document import Reject


class _FullDisk:
    """A file handle whose writes fail as on a full disk after `room` bytes."""

    def __init__(self, handle, room):
        self._handle, self._room = handle, room
        self.closed = False

    def write(self, data):
        self._room -= len(data)
        if self._room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._handle.write(data)

    def close(self):
        self.closed = True
        self._handle.close()


def test_a_full_disk_while_writing_rejects_publishes_nothing(tmp_path):
    log = RejectLog(tmp_path)
    log._handle = _FullDisk(log._handle, room=300)
    with pytest.raises(OutputDirError, match="No space left on device"), log:
        for i in range(100):
            log.add(Reject(source="in.jsonl", line=i, reason="bad"))
    assert list(tmp_path.iterdir()) == []  # neither _rejects.jsonl nor its temp file


def _bad_corpus(path):
    lines = [json.dumps({"id": f"good-{i}", "text": "fine text"}) for i in range(3)]
    lines += [json.dumps({"id": f"bad-{i}", "text": ""}) for i in range(2000)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def _m3pipe_with_a_full_disk(args, env):
    """`m3pipe ARGS` where every file stops at 64 KiB (RLIMIT_FSIZE: writes fail, EFBIG)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        timeout=300,
        env={**os.environ, **env},
    )


@pytest.mark.slow
def test_encode_on_a_full_disk_fails_clearly_and_publishes_no_partial_rejects(tmp_path, tiny):
    """Exit 1 with the reason, no _rejects.jsonl, no manifest, no temp file. (`tiny` builds
    the model first: the encode process only reads it.)"""
    inp, out = _bad_corpus(tmp_path / "in.jsonl"), tmp_path / "out"
    proc = _m3pipe_with_a_full_disk(
        ["encode", str(inp), "--out", str(out), "-q"], {"M3PIPE_MODEL": "random:tiny"}
    )
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert "cannot write" in proc.stderr and "_rejects.jsonl" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == []


def test_submit_on_a_full_disk_fails_the_job_clearly(tmp_path, redis_server, store):
    inp, out = _bad_corpus(tmp_path / "in.jsonl"), tmp_path / "out"
    proc = _m3pipe_with_a_full_disk(
        ["submit", str(inp), "--out", str(out)], {"M3PIPE_BROKER_URL": redis_server.url}
    )
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert "cannot write" in proc.stderr and "Traceback" not in proc.stderr
    [job_id] = store.job_ids()
    status = store.status(job_id)
    assert status.state.value == "failed" and "cannot write" in (status.error or "")
    assert sorted(p.name for p in out.iterdir()) == ["_job.json"]  # no partial rejects


def test_bad_out_values_are_refused_clearly(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "text": "x"}\n')
    args = ["encode", str(inp), "--model", "random:tiny", "-q", "--out"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, ""])
    assert exit_info.value.code == EXIT_USAGE
    assert "--out: must not be empty" in capsys.readouterr().err

    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main([*args, str(a_file / "sub")]) == EXIT_FAILED
    assert f"{a_file} is not a directory" in capsys.readouterr().err

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    for extra in ([], ["--overwrite"]):
        assert main([*args, str(mine), *extra]) == EXIT_FAILED
        assert "holds files m3pipe did not write (notes.txt)" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_own_output_and_stale_temp_files_are_not_foreign(tmp_path):
    for name in ("part-00000.parquet", "_manifest.json", "._rejects.jsonl.tmp-1-abc"):
        (tmp_path / name).write_text("x")
    prepare_output_dir(tmp_path, overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_or_a_directory_in_an_output_is_foreign_and_left_alone(tmp_path):
    """A link named like a part file is not one of ours: --overwrite must not take it for
    output, nor follow it."""
    out, target = tmp_path / "out", tmp_path / "elsewhere.parquet"
    out.mkdir()
    target.write_text("the user's")
    (out / "part-00000.parquet").symlink_to(target)
    with pytest.raises(OutputDirError, match=r"did not write \(part-00000.parquet\)"):
        prepare_output_dir(out, overwrite=True)
    (out / "part-00000.parquet").unlink()
    (out / "data").mkdir()
    (out / "_letters").mkdir()  # its own: failed shards' messages
    with pytest.raises(OutputDirError, match=r"did not write \(data/\)"):
        prepare_output_dir(out, overwrite=True)
    assert target.read_text() == "the user's"
