"""An iterator run in a process of its own, a few items ahead of its consumer.

The producer reads and parses its inputs here (producers/inputs/columns.py) while it checks
ids, cuts shards and queues them: two cores instead of one. What crosses between the
processes is small (columns, not documents), so pickling does not eat what the second core
gains. docs/scale.md has the figures.

The child is started with `spawn`: it shares nothing with the producer (no Redis socket, no
RocksDB thread is forked). It ignores SIGINT, which the producer handles; it ends when its
iterator does, or is terminated when the consumer stops early. A child that dies fails the
consumer with ReadAheadFailed, never a hang.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import signal
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pipeline.errors import InputError

T = TypeVar("T")
DEPTH = 4  # items waiting in the pipe: what the child may read ahead (bounded memory)
POLL_SECONDS = 1.0  # how often a waiting consumer checks that the child still lives

_ITEM, _ERROR, _END = "item", "error", "end"


class ReadAheadFailed(InputError):
    """The reading process died, or failed with an error that could not be sent back."""


def read_ahead(produce: Callable[..., Iterator[T]], *args: Any, depth: int = DEPTH) -> Iterator[T]:
    """`produce(*args)`'s items, made in a child process (`produce` and `args` picklable:
    a module-level function). An exception it raises is raised here, once the items before
    it are consumed."""
    context = multiprocessing.get_context("spawn")
    channel: Any = context.Queue(depth)
    child = context.Process(
        target=_run, args=(produce, args, channel), name="m3pipe-read-ahead", daemon=True
    )
    child.start()
    try:
        while True:
            try:
                kind, value = channel.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not child.is_alive():
                    raise ReadAheadFailed(
                        f"the reading process died (exit code {child.exitcode})"
                    ) from None
                continue
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value
    finally:
        if child.is_alive():
            child.terminate()
        child.join()
        channel.close()
        channel.join_thread()


def _run(produce: Callable[..., Iterator[Any]], args: tuple[Any, ...], channel: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for item in produce(*args):
            channel.put((_ITEM, item))
    except BaseException as exc:
        channel.put((_ERROR, _sendable(exc)))
    else:
        channel.put((_END, None))


def _sendable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else ReadAheadFailed with its traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        text = "".join(traceback.format_exception(exc))
        return ReadAheadFailed(f"the reading process failed:\n{text}")
    return exc
