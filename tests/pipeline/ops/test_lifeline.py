"""Children that die with their parent; scratch directories of dead owners removed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from pipeline.ops import lifeline


def test_scratch_dirs_of_dead_owners_go_and_live_ones_stay(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(lifeline.tempfile, "tempdir", None)  # re-read TMPDIR
    mine = lifeline.owned_scratch_dir("m3t-")
    make = "from pipeline.ops import lifeline; print(lifeline.owned_scratch_dir('m3t-'))"
    dead = subprocess.run(
        [sys.executable, "-c", make],
        capture_output=True,
        text=True,
        check=True,
        env={"TMPDIR": str(tmp_path)},
    ).stdout.strip()
    foreign = tmp_path / "m3t-not-ours"
    foreign.mkdir()  # no owner file: never touched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [mine.name, dead.rsplit("/", 1)[1], foreign.name]
    )
    assert lifeline.remove_stale_scratch("m3t-") == [tmp_path / dead.rsplit("/", 1)[1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, foreign.name])


def test_a_child_gets_its_signal_when_the_parent_dies(tmp_path):
    """parent -> child (dies_with_parent); SIGKILL the parent, the child goes too."""
    script = (
        "import subprocess, sys, time, signal\n"
        "from pipeline.ops.lifeline import dies_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],\n"
        "                         preexec_fn=dies_with_parent(signal.SIGKILL))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _state(child) not in ("gone", "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _state(child) in ("gone", "Z")  # a zombie waits for PID 1 to reap it


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
