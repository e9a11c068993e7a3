"""`m3pipe worker` whose pool process kills itself (SIGKILL) at a named stage of a shard's
pipelined path, once per shard: what a crash there does, at a point chosen rather than
timed. Run as `python -m tests.integration.stage_kills worker ...`; the plan is in the
environment: STAGE_KILLS="0:read,1:compute,..." (shard: stage) and STAGE_KILLS_DIR, where a
marker file records each kill, so the shard's next delivery runs through.

The stages, in the order a shard meets them (pipeline/runtime/shard_runner.py):
- read: the shard's documents being read from the job's inputs;
- tokenize-ahead: the engine's tokenizer thread on the shard's second piece (while the
  first computes);
- compute: a batch launched while the previous one is in flight;
- write-behind: the part writer's thread, a piece written to the hidden temp file, the
  shard still computing;
- committed: the part durable and visible under its name, the shard's state not recorded;
- recorded: the shard recorded done (and the job finalised if it was the last), the
  message not acknowledged yet.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAGES = ("read", "tokenize-ahead", "compute", "write-behind", "committed", "recorded")
PLAN_ENV, DIR_ENV = "STAGE_KILLS", "STAGE_KILLS_DIR"

_shard: int | None = None  # the shard this pool process is running
_calls: dict[tuple[int, str], int] = {}


def plan_of(text: str) -> dict[int, str]:
    plan = {}
    for entry in filter(None, text.split(",")):
        shard, stage = entry.split(":")
        assert stage in STAGES, stage
        plan[int(shard)] = stage
    return plan


def _maybe_die(stage: str, at_call: int = 1) -> None:
    """SIGKILL this process if the plan kills the current shard at `stage`, on the stage's
    `at_call`-th call in this delivery, and it has not been killed there before."""
    shard = _shard
    if shard is None or plan_of(os.environ.get(PLAN_ENV, "")).get(shard) != stage:
        return
    key = (shard, stage)
    _calls[key] = _calls.get(key, 0) + 1
    if _calls[key] != at_call:
        return
    marker = Path(os.environ[DIR_ENV]) / f"killed-{shard}-{stage}"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:  # killed here once already: this delivery runs through
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _before(stage: str, at_call: int = 1) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def hooked(*args: Any, **kwargs: Any) -> Any:
            _maybe_die(stage, at_call)
            return function(*args, **kwargs)

        return hooked

    return wrap


def install() -> None:
    from pipeline.engine import embedder
    from pipeline.jobs.store import JobStore
    from pipeline.runtime import shard_runner
    from pipeline.storage.direct_file import DirectFile
    from pipeline.tasks.embed import EmbedTask

    original_run = shard_runner._encode_and_record

    @functools.wraps(original_run)
    def encode_and_record(message: Any, *args: Any, **kwargs: Any) -> Any:
        global _shard
        _shard = message.shard
        _calls.clear()
        outcome = original_run(message, *args, **kwargs)
        _maybe_die("recorded")
        return outcome

    shard_runner._encode_and_record = encode_and_record
    EmbedTask.shard_items = _before("read")(EmbedTask.shard_items)
    original_tokenize = embedder.EmbedEngine.tokenize

    @functools.wraps(original_tokenize)
    def tokenize(self: Any, docs: Any) -> Any:
        if threading.current_thread().name == "tokenize-ahead":
            _maybe_die("tokenize-ahead", at_call=2)
        return original_tokenize(self, docs)

    embedder.EmbedEngine.tokenize = tokenize
    embedder.forward_batch = _before("compute", at_call=2)(embedder.forward_batch)
    original_flush = DirectFile.flush

    @functools.wraps(original_flush)
    def flush(self: DirectFile) -> None:
        original_flush(self)
        _maybe_die("write-behind")

    DirectFile.flush = flush
    JobStore.mark_done = _before("committed")(JobStore.mark_done)


if __name__ == "__main__":
    install()
    from pipeline.cli.main import entry

    entry()
