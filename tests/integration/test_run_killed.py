"""`kill -9` of `m3pipe run`: its Redis, workers and their pool processes die with it, and
the next run removes the scratch directory it left (issue 14, item 16)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.conftest import slow_stub, write_jsonl


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(entry.name)] = (int(fields[1]), fields[0])
    return found


def descendants(root: int) -> set[int]:
    table = _processes()
    found, frontier = set(), {root}
    while frontier:
        children = {pid for pid, (parent, _) in table.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def alive(pid: int) -> bool:
    state = _processes().get(pid)
    return state is not None and state[1] != "Z"


def test_kill_9_of_run_takes_its_children_and_the_next_run_cleans_up(tmp_path, cli_env, stub_built):
    from pipeline.engine.synthetic_text import TextGenerator

    scratch_root = Path(tempfile.mkdtemp(prefix="m3k", dir="/tmp"))  # short: unix sockets
    env = {k: v for k, v in cli_env.items() if k != "M3PIPE_BROKER_URL"}
    env["TMPDIR"] = str(scratch_root)
    slow_stub(env, stub_built, 5000)  # ~2 s a shard of ten ~900-token documents
    gen = TextGenerator(9)
    corpus = write_jsonl(
        tmp_path / "c.jsonl", [{"id": f"d{i}", "text": gen.document(200)} for i in range(300)]
    )
    command = [
        sys.executable,
        "-m",
        "pipeline.cli.main",
        "run",
        str(corpus),
        "-q",
        "--workers",
        "2",
    ]
    command += ["--shard-docs", "10"]
    run = subprocess.Popen(
        [*command, "--out", str(tmp_path / "out")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 180
        # redis-server, two workers and their two pool processes, and shards being written
        while len(descendants(run.pid)) < 5 or not list((tmp_path / "out").glob("*.parquet")):
            assert run.poll() is None and time.monotonic() < deadline, "run ended too soon"
            time.sleep(0.1)
        children = descendants(run.pid)
        [scratch] = list(scratch_root.glob("m3pipe-run-*"))
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in children if alive(pid)] == []
        assert scratch.exists()  # a killed process cleans nothing itself

        small = write_jsonl(tmp_path / "small.jsonl", [{"id": "a", "text": "one document"}])
        again = subprocess.run(
            [*command[:4], str(small), "-q", "--out", str(tmp_path / "out2")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert not scratch.exists()  # removed by the next run: its owner was gone
        assert list(scratch_root.iterdir()) == []  # and the second run removed its own
    finally:
        for pid in children | descendants(run.pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
        shutil.rmtree(scratch_root, ignore_errors=True)
