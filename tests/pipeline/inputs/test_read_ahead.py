"""An iterator run in a reading process: its items in order, its errors raised where they
are consumed, and a dead child a failure, never a hang."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from pipeline.errors import InputError
from pipeline.inputs.read_ahead import ReadAheadFailed, read_ahead


def counting(n: int, fail_at: int | None = None) -> Iterator[int]:
    for i in range(n):
        if i == fail_at:
            raise InputError(f"bad input at {i}")
        yield i


def dying() -> Iterator[int]:
    os._exit(3)  # as the OOM killer would: nothing sent, no error
    yield 0


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("no")
        self.lock = threading.Lock()


def unpicklable() -> Iterator[int]:
    raise Unpicklable()
    yield 0


def test_items_arrive_in_order_and_an_error_after_the_items_before_it():
    assert list(read_ahead(counting, 1000)) == list(range(1000))
    got: list[int] = []
    with pytest.raises(InputError, match="bad input at 5"):
        for item in read_ahead(counting, 10, 5):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_a_child_that_dies_fails_the_consumer_and_one_that_cannot_send_its_error_too():
    with pytest.raises(ReadAheadFailed, match=r"died \(exit code 3\)"):
        list(read_ahead(dying))
    with pytest.raises(ReadAheadFailed, match="Unpicklable"):
        list(read_ahead(unpicklable))


def test_a_script_without_a_main_guard_can_read_ahead(tmp_path):
    """The child never re-imports the caller's main module (multiprocessing's spawn would,
    and fail a script that reads ahead at import time)."""
    script = tmp_path / "script.py"
    script.write_text(
        "from pipeline.inputs.read_ahead import read_ahead\n"
        "from tests.pipeline.inputs.test_read_ahead import counting\n"
        "print(sum(read_ahead(counting, 100)))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.stdout.strip() == "4950", done.stderr
