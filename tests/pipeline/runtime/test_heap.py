"""The collector is paused while a model loads; a process started as `m3pipe` freezes what
the load leaves, one that only calls `main` (a test) does not."""

from __future__ import annotations

import gc
import subprocess
import sys

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
