"""One giant record costs bounded memory (issue 14, items 6 and 7): a 200 MB JSONL line
through `encode` (truncated to its window, tokenizing only a prefix) and through `submit`,
and a gzip that inflates to 2 GB without a newline. Peak RSS is each command's own
(RUSAGE_CHILDREN of a wrapper whose only child is the command)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds

PEAK_LIMIT_MB = 2048
_WRAPPER = (
    "import resource, subprocess, sys; "
    "code = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); "
    "sys.exit(code)"
)


def peak_mb(args: list[str], env: dict[str, str]) -> tuple[int, int, str]:
    """(exit code, peak RSS in MB, stderr) of `m3pipe ARGS`."""
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc.returncode, int(proc.stdout.strip().splitlines()[-1]), proc.stderr


def giant_jsonl(path: Path, megabytes: int) -> Path:
    words = "giant record words " * ((1 << 20) // 19 + 1)
    with open(path, "w") as out:
        out.write(json.dumps({"id": "small-1", "text": "before"}) + "\n")
        out.write('{"id": "giant", "text": "')
        for _ in range(megabytes):
            out.write(words[: 1 << 20])
        out.write('"}\n')
        out.write(json.dumps({"id": "small-2", "text": "after"}) + "\n")
    return path


def test_a_200_mb_record_is_encoded_from_its_prefix_and_refused_by_submit(tmp_path, cli_env):
    corpus = giant_jsonl(tmp_path / "giant.jsonl", 200)
    limit = ["--max-record-bytes", str(300 * 1024 * 1024)]
    encode = ["encode", str(corpus), "--out", str(tmp_path / "enc"), "-q", "--max-length", "512"]
    code, peak, err = peak_mb([*encode, *limit], cli_env)
    assert code == 0, err[-2000:]
    table = ds.dataset(tmp_path / "enc", format="parquet").to_table()
    assert table.column("id").to_pylist() == ["small-1", "giant", "small-2"]
    assert table.column("n_tokens").to_pylist()[1] == 512
    assert table.column("truncated").to_pylist() == [False, True, False]
    assert peak < PEAK_LIMIT_MB, peak

    code, peak, err = peak_mb(
        ["submit", str(corpus), "--out", str(tmp_path / "sub"), *limit], cli_env
    )
    assert code == 0, err[-2000:]
    [reject] = [json.loads(x) for x in (tmp_path / "sub" / "_rejects.jsonl").open()]
    assert reject["id"] == "giant" and "message limit" in reject["reason"]
    assert peak < PEAK_LIMIT_MB, peak


def test_a_2_gb_gzip_without_a_newline_is_one_reject(tmp_path, cli_env):
    path = tmp_path / "bomb.jsonl.gz"
    block = b"x" * (64 << 20)
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(b'{"id": "ok", "text": "fine"}\n{"id": "bomb", "text": "')
        for _ in range(32):  # 2 GiB inflated
            out.write(block)
    assert path.stat().st_size < 16 << 20
    code, peak, err = peak_mb(["encode", str(path), "--out", str(tmp_path / "o"), "-q"], cli_env)
    assert code == 3, err[-2000:]
    [reject] = [json.loads(x) for x in (tmp_path / "o" / "_rejects.jsonl").open()]
    assert reject["line"] == 2 and "larger than --max-record-bytes" in reject["reason"]
    assert peak < PEAK_LIMIT_MB, peak
    code, peak, err = peak_mb(["submit", str(path), "--out", str(tmp_path / "s")], cli_env)
    assert code == 0, err[-2000:]
    assert "larger than --max-record-bytes" in (tmp_path / "s" / "_rejects.jsonl").read_text()
    assert peak < PEAK_LIMIT_MB, peak
