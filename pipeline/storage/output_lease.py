"""`_owner.json`: which run or job owns an output directory, so that two never write into one.

A local command (`encode`, `rerank`) takes the lease for its process and renews it while it
runs; a queue job takes it for the job at submit, and its workers check it before each part
becomes visible. A second run finds the lease held and is refused before any heavy work.

A lease is free when its file is missing or its holder is gone: a local command's process
is no longer alive on this host (pid and start time), or its lease was not renewed for
`STALE_SECONDS` (a holder on another host); a job has ended or is no longer known (the
caller says, through `job_alive`) and its lease is over `REGISTER_SECONDS` old. So a
crashed run's directory can be taken again, by its `--resume` or anyone else, and a live
one never.

Local directories take the lease with an exclusive create, a stale one moved aside by an
atomic rename first (of two racers, one wins). Object stores have no exclusive create
through pyarrow: the lease is written after a look that found none and read back; the
narrow race left (two takers between look and write) is caught by the per-part check, which
fails the run whose lease was overwritten before any of its parts appear.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import OutputDirError
from pipeline.storage.location import Location

LEASE = "_owner.json"
RENEW_SECONDS = 20.0
STALE_SECONDS = 120.0  # a lease not renewed for this long, held from another host, is free
REGISTER_SECONDS = 30.0  # a job's lease this young is live even before Redis knows the job


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (pid reuse shows as a change)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass
class OutputLease:
    """A held lease on `out`. `check()` before making anything visible; `release()` at the
    end (a context manager releases on exit and renews in a thread while it runs)."""

    out: Location
    record: dict[str, Any]
    _stop: threading.Event | None = None
    _renewer: threading.Thread | None = None

    @property
    def token(self) -> str:
        return str(self.record["token"])

    def check(self) -> None:
        """Raise OutputDirError unless the directory's lease is still this one."""
        current = read_lease(self.out)
        if current is None or current.get("token") != self.token:
            holder = describe_holder(current) if current else "nobody"
            raise OutputDirError(
                f"output directory {self.out} was taken over by {holder} while this run "
                "wrote to it: stopped before making more output visible"
            )

    def renew(self) -> None:
        self.check()
        self.record["renewed"] = time.time()
        _write(self.out, self.record)

    def release(self) -> None:
        """Give the directory up (if it is still ours)."""
        self._stop_renewing()
        current = read_lease(self.out)
        if current is not None and current.get("token") == self.token:
            with contextlib.suppress(OSError):
                (self.out / LEASE).delete()

    def start_renewing(self, every: float = RENEW_SECONDS) -> None:
        self._stop = threading.Event()
        stop = self._stop

        def renew() -> None:
            while not stop.wait(every):
                with contextlib.suppress(OutputDirError, OSError):
                    self.renew()

        self._renewer = threading.Thread(target=renew, name="m3pipe-lease", daemon=True)
        self._renewer.start()

    def _stop_renewing(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None

    def __enter__(self) -> OutputLease:
        self.start_renewing()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def take_lease(
    out: Location,
    *,
    command: str,
    job_id: str | None = None,
    job_alive: Callable[[str], bool | None] | None = None,
) -> OutputLease:
    """Take `out`'s lease for this process (`job_id` None) or for a queue job; refused
    (OutputDirError naming the holder) while another live holder has it. `job_alive(id)`
    says whether a job holding it has not ended (None: Redis does not know the job). A
    lease of the job `job_id` itself (a job being resumed: not running) is taken over."""
    record = {
        "token": uuid.uuid4().hex,
        "command": command,
        "job_id": job_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        "taken": time.time(),
        "renewed": time.time(),
    }
    for _ in range(3):
        current = read_lease(out)
        if current is not None:
            ours = job_id is not None and current.get("job_id") == job_id
            if not ours and holder_alive(current, job_alive):
                raise OutputDirError(
                    f"output directory {out} is in use by {describe_holder(current)}: "
                    "wait for it to end (or cancel it), or choose another --out"
                )
            if not _move_aside(out, current):
                continue  # another taker moved it first: look again
        if _create(out, record):
            lease = OutputLease(out, record)
            lease.check()  # an object store's last writer wins: make sure it was us
            return lease
    raise OutputDirError(f"output directory {out} is being taken by another run: try again")


def read_lease(out: Location) -> dict[str, Any] | None:
    """The lease record, or None when there is none (or it is unreadable garbage)."""
    try:
        record = json.loads((out / LEASE).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"token": None, "command": "unknown", "renewed": 0.0}  # damaged: stale
    return record if isinstance(record, dict) else {"token": None, "renewed": 0.0}


def holder_alive(
    record: dict[str, Any], job_alive: Callable[[str], bool | None] | None = None
) -> bool:
    """Whether the lease's holder may still write."""
    job_id = record.get("job_id")
    if job_id:
        alive = job_alive(str(job_id)) if job_alive is not None else True
        if alive is not None:
            return alive
        # Not known to Redis: a job takes its lease just before it is registered, so a
        # young lease counts as live; an old one's job expired or was never registered.
        taken = record.get("taken")
        return isinstance(taken, int | float) and time.time() - float(taken) < REGISTER_SECONDS
    pid, host = record.get("pid"), record.get("host")
    if host == socket.gethostname() and isinstance(pid, int):
        return _process_start(pid) is not None and _process_start(pid) == record.get("pid_start")
    renewed = record.get("renewed")
    if not isinstance(renewed, int | float):
        return False
    return time.time() - float(renewed) < STALE_SECONDS


def describe_holder(record: dict[str, Any]) -> str:
    if record.get("job_id"):
        return f"job {record['job_id']}"
    since = time.strftime("%H:%M:%S", time.localtime(float(record.get("taken") or 0)))
    return (
        f"`m3pipe {record.get('command', '?')}` (pid {record.get('pid', '?')} on "
        f"{record.get('host', '?')}, since {since})"
    )


def _create(out: Location, record: dict[str, Any]) -> bool:
    data = json.dumps(record, sort_keys=True).encode()
    target = out / LEASE
    if not out.is_local:
        if target.exists():
            return False
        target.write_bytes(data)
        return True
    try:
        handle = os.open(target.local_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(handle, data)
        os.fsync(handle)
    finally:
        os.close(handle)
    return True


def _write(out: Location, record: dict[str, Any]) -> None:
    (out / LEASE).write_bytes(json.dumps(record, sort_keys=True).encode())


def _move_aside(out: Location, stale: dict[str, Any]) -> bool:
    """Remove a stale lease; False when another taker got there first."""
    target = out / LEASE
    if not out.is_local:
        with contextlib.suppress(FileNotFoundError):
            target.delete()
        return True
    aside = target.local_path.with_name(f".{LEASE}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(target.local_path, aside)
    except FileNotFoundError:
        return False
    os.unlink(aside)
    return True
