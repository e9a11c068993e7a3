"""A command process's heap: the cyclic garbage collector around a model's load, and no
teardown at its exit.

Loading a model imports torch and transformers and builds the model: ~250k objects that
live as long as the process and hold no garbage. The collector walked them in full four
times during `m3pipe encode`'s start (0.22 s of its ~2 s) and again in every later full
collection (~0.1 s each). So it is paused while a model loads; and a process that serves a
job with that model (a worker's pool process; `m3pipe` started as a command,
`pipeline.cli.main.entry`) then freezes what exists (`gc.freeze`), so later collections skip
it. Objects that become garbage later are collected as ever. A caller that is not its own
process (a test calling `main`) does not freeze: there models come and go.

At its end, a process of its own skips the interpreter's teardown, which frees every one of
those objects and module by module (0.15 s for `m3pipe run`'s parent, ~0.3 s for a process
that loaded a model, against a whole command of a few seconds): its exit handlers run, its
threads are waited for and its output flushed as on a normal exit, then `os._exit`. What is
left to free goes with the process; every file the commands write is closed before they
return (a context manager each), so nothing depends on a finaliser at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
import threading
from collections.abc import Iterator
from typing import NoReturn


@contextlib.contextmanager
def collector_paused_while_loading(freeze: bool) -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if enabled:
            gc.enable()


def exit_without_teardown(code: int) -> NoReturn:
    """End the process with `code` as a normal exit would, less the heap's teardown:
    threads ended as the interpreter ends them (what they registered to stop them, such as
    an executor's, runs first; then every non-daemon thread is joined), exit handlers run,
    standard streams flushed."""
    threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter's exit calls
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, a closed stream
            stream.flush()
    os._exit(code)
