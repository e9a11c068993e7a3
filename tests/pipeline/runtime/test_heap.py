"""The collector is paused while a model loads; a process started as `m3pipe` freezes what
the load leaves, one that only calls `main` (a test) does not."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from pipeline.runtime.heap import collector_paused_while_loading


def test_the_collector_is_paused_while_loading_and_runs_again_after():
    frozen = gc.get_freeze_count()
    with collector_paused_while_loading(freeze=False):
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen  # not asked to freeze: nothing frozen


def test_a_collector_the_caller_had_paused_stays_paused():
    gc.disable()
    try:
        with collector_paused_while_loading(freeze=False):
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_runs_again_after_a_load_that_failed():
    try:
        with collector_paused_while_loading(freeze=False):
            raise RuntimeError("the model did not load")
    except RuntimeError:
        pass
    assert gc.isenabled()


def test_a_process_of_its_own_freezes_what_its_load_leaves():
    code = (
        "import gc\n"
        "from pipeline.runtime.heap import collector_paused_while_loading\n"
        "with collector_paused_while_loading(freeze=True):\n"
        "    loaded = [[i] for i in range(10000)]\n"
        "print(gc.get_freeze_count() >= 10000, gc.isenabled())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_m3pipe_as_a_command_freezes_and_main_called_in_a_process_does_not(tmp_path, monkeypatch):
    """The console script and `python -m` enter through `entry` (own_process=True); a test
    that calls `main` does not freeze its process."""
    import tomllib
    from pathlib import Path

    from pipeline.cli import local_commands
    from pipeline.cli import main as cli

    root = Path(__file__).resolve().parents[3]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["m3pipe"] == "pipeline.cli.main:entry"

    asked: list[bool] = []

    def paused(freeze):
        asked.append(freeze)
        return collector_paused_while_loading(freeze=False)  # this process is never frozen

    monkeypatch.setattr(local_commands, "collector_paused_while_loading", paused)
    monkeypatch.setattr(cli, "collector_paused_while_loading", paused)
    corpus = tmp_path / "in.jsonl"
    corpus.write_text('{"id": "a", "text": "some text"}\n')
    for own_process in (False, True):
        asked.clear()
        args = ["encode", str(corpus), "--out", str(tmp_path / f"out-{own_process}"), "-q",
                "--model", "stub:huge"]  # fmt: skip
        assert cli.main(args, own_process=own_process) != 0  # no such stub: fails at load
        assert asked == [own_process, own_process]  # transformers' import, the model's load


_EXIT_SCRIPT = """
import atexit, sys, threading, time
from pipeline.runtime.heap import exit_without_teardown
atexit.register(lambda: print("exit handler ran"))
def late():
    time.sleep(0.2)
    sys.stdout.write("thread finished ")  # not flushed by the thread
threading.Thread(target=late).start()
from concurrent.futures import ThreadPoolExecutor
idle = ThreadPoolExecutor(1)  # its thread waits for work until the exit stops it
idle.submit(print, "executor ran").result()
class Freed:
    def __del__(self):
        print("torn down")
kept = Freed()  # freed by the interpreter's teardown, if there is one
sys.stdout.write("buffered ")
{end}(3)
"""


def _ended_with(end: str) -> subprocess.CompletedProcess[str]:
    script = _EXIT_SCRIPT.format(end=end)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )  # a thread the exit failed to stop would hang it


def test_an_exit_without_teardown_ends_as_a_normal_exit_does_less_the_teardown():
    normal = _ended_with("sys.exit")
    fast = _ended_with("exit_without_teardown")
    assert normal.returncode == fast.returncode == 3
    for ended in (normal, fast):  # buffered output, the thread waited for, the handlers run
        assert "buffered " in ended.stdout
        assert "thread finished " in ended.stdout
        assert "exit handler ran" in ended.stdout
        assert "executor ran" in ended.stdout
    assert "torn down" in normal.stdout  # what a normal exit frees, one object at a time
    assert "torn down" not in fast.stdout


def test_m3pipe_as_a_command_ends_with_mains_code_without_teardown(monkeypatch):
    from pipeline.cli import main as cli

    ended: list[int] = []

    class Ended(Exception):
        pass

    def end(code: int) -> None:
        ended.append(code)
        raise Ended

    monkeypatch.setattr(cli, "main", lambda own_process: 7 if own_process else 0)
    monkeypatch.setattr(cli, "exit_without_teardown", end)
    with pytest.raises(Ended):
        cli.entry()
    assert ended == [7]
