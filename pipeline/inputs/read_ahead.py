"""An iterator run in a process of its own, ahead of its consumer.

The producer reads and parses its inputs here (pipeline/inputs/readers/jsonl_columns.py)
while it checks ids, cuts shards and queues them: two cores instead of one. What crosses between the
processes is small (columns, not documents), so pickling does not eat what the second core
gains. docs/scale.md has the figures.

The child is a fresh interpreter (`python -m pipeline.inputs.read_ahead`), not a
multiprocessing child: it shares nothing with the producer (no Redis socket, no RocksDB
thread is forked), and it never re-imports the caller's main module, so a script that
calls `submit_job` needs no `if __name__ == "__main__"` guard. It gets the function and its
arguments pickled on stdin and sends back length-prefixed pickles on stdout; the pipe (1 MB
where Linux allows) bounds how far it reads ahead. It ignores SIGINT, which the producer
handles; it is killed when the consumer stops early, and dies on its next write if the
producer is gone. A child that dies fails the consumer with ReadAheadFailed, never a hang.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import signal
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

from pipeline.errors import InputError

T = TypeVar("T")
PIPE_BYTES = 1 << 20  # how much the child may write ahead (Linux's default cap for a pipe)

_HEADER = struct.Struct("<cQ")  # tag, pickle length
_ITEM, _ERROR, _END = b"i", b"e", b"."


class ReadAheadFailed(InputError):
    """The reading process died, or failed with an error that could not be sent back."""


def read_ahead(produce: Callable[..., Iterator[T]], *args: Any) -> Iterator[T]:
    """`produce(*args)`'s items, made in a child process (`produce` and `args` picklable:
    a module-level function). An exception it raises is raised here, once the items before
    it are consumed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
    child = subprocess.Popen(
        [sys.executable, "-m", __name__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            with contextlib.suppress(OSError):  # above the system's cap: the default size
                fcntl.fcntl(child.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        with contextlib.suppress(BrokenPipeError):  # it died at start: told below
            child.stdin.write(pickle.dumps((produce, args), pickle.HIGHEST_PROTOCOL))
            child.stdin.close()
        while True:
            frame = _read_frame(child.stdout)
            if frame is None:
                code = child.wait()
                raise ReadAheadFailed(f"the reading process died (exit code {code})")
            tag, body = frame
            if tag == _END:
                return
            value = pickle.loads(body)
            if tag == _ERROR:
                raise value
            yield value
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()


def _read_frame(stream: IO[bytes]) -> tuple[bytes, bytes] | None:
    """The next (tag, pickle), or None at the end of the stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    tag, size = _HEADER.unpack(header)
    body = stream.read(size)
    return (tag, body) if len(body) == size else None


def _child() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The frames get stdout's pipe to themselves: anything printed goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    produce, args = pickle.load(sys.stdin.buffer)

    def send(tag: bytes, value: Any) -> None:
        body = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        out.write(_HEADER.pack(tag, len(body)))
        out.write(body)

    try:
        try:
            for item in produce(*args):
                send(_ITEM, item)
        except Exception as exc:
            send(_ERROR, _sendable(exc))
        else:
            send(_END, None)
        out.flush()
    except BrokenPipeError:  # the consumer is gone: nothing to tell
        os._exit(1)


def _sendable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else ReadAheadFailed with its traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        text = "".join(traceback.format_exception(exc))
        return ReadAheadFailed(f"the reading process failed:\n{text}")
    return exc


if __name__ == "__main__":
    # Run as the module by its name, so what it pickles (ReadAheadFailed) unpickles there.
    from pipeline.inputs.read_ahead import _child as child_main

    child_main()
