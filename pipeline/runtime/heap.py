"""The cyclic garbage collector around a model's load.

Loading a model imports torch and transformers and builds the model: ~250k objects that
live as long as the process and hold no garbage. The collector walked them in full four
times during `m3pipe encode`'s start (0.22 s of its ~2 s) and again in every later full
collection (~0.1 s each). So it is paused while a model loads; and a process started as
`m3pipe` (a worker, `encode`; `pipeline.cli.main.entry`) then freezes what exists
(`gc.freeze`), so later collections skip it. Objects that become garbage later are
collected as ever. A process that only calls `main` (the tests) is not frozen: there the
models come and go.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_freeze_after_loading = False


def freeze_after_loading() -> None:
    """This process serves a job with the models it loads: freeze what a load leaves."""
    global _freeze_after_loading
    _freeze_after_loading = True


@contextlib.contextmanager
def collector_paused_while_loading() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if _freeze_after_loading:
            gc.freeze()
        if enabled:
            gc.enable()
