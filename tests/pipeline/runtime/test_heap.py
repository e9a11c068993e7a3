"""The collector is paused while a model loads; a process started as `m3pipe` freezes what
the load leaves, one that only calls `main` (a test) does not."""

from __future__ import annotations

import gc
import subprocess
import sys

from pipeline.runtime.heap import collector_paused_while_loading


def test_the_collector_is_paused_while_loading_and_runs_again_after():
    frozen = gc.get_freeze_count()
    with collector_paused_while_loading():
        assert not gc.isenabled()
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen  # this process only calls main: nothing frozen


def test_a_collector_the_caller_had_paused_stays_paused():
    gc.disable()
    try:
        with collector_paused_while_loading():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_runs_again_after_a_load_that_failed():
    try:
        with collector_paused_while_loading():
            raise RuntimeError("the model did not load")
    except RuntimeError:
        pass
    assert gc.isenabled()


def test_an_m3pipe_process_freezes_what_its_load_leaves():
    code = (
        "import gc\n"
        "from pipeline.runtime import heap\n"
        "heap.freeze_after_loading()  # as pipeline.cli.main.entry does\n"
        "with heap.collector_paused_while_loading():\n"
        "    loaded = [[i] for i in range(10000)]\n"
        "print(gc.get_freeze_count() >= 10000, gc.isenabled())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_the_console_script_and_python_m_enter_through_entry():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["m3pipe"] == "pipeline.cli.main:entry"
    assert "entry()" in (root / "pipeline" / "cli" / "__main__.py").read_text()
