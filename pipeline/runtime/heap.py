"""The cyclic garbage collector around a model's load.

Loading a model imports torch and transformers and builds the model: ~250k objects that
live as long as the process and hold no garbage. The collector walked them in full four
times during `m3pipe encode`'s start (0.22 s of its ~2 s) and again in every later full
collection (~0.1 s each). So it is paused while a model loads; and a process that serves a
job with that model (a worker's pool process; `m3pipe` started as a command,
`pipeline.cli.main.entry`) then freezes what exists (`gc.freeze`), so later collections skip
it. Objects that become garbage later are collected as ever. A caller that is not its own
process (a test calling `main`) does not freeze: there models come and go.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


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
