"""Following a job: poll its status until it ends. What is shown of it is the CLI's
(pipeline/cli/job_view.py)."""

from __future__ import annotations

import time
from collections.abc import Callable

from pipeline.jobs.store import JobStore
from schemas.job import JobStatus


def follow(
    store: JobStore,
    job_id: str,
    *,
    poll_seconds: float = 0.5,
    timeout: float | None = None,
    check: Callable[[], None] | None = None,
    on_status: Callable[[JobStatus], None] | None = None,
    end_check_seconds: float | None = None,
) -> JobStatus:
    """Poll until the job ends (or `timeout`); `on_status` hears every status read (a
    progress bar), `check` runs every poll and may raise to stop following (e.g. all
    workers died). With `end_check_seconds`, the job's state alone (one field) is looked
    at that often between polls, so its end is seen within that time rather than a poll's
    (`m3pipe run` waits for nothing else)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = store.status(job_id)
        if on_status is not None:
            on_status(status)
        if status.state.finished:
            return status
        if deadline is not None and time.monotonic() > deadline:
            return status
        if check is not None:
            check()
        _sleep_unless_ended(store, job_id, poll_seconds, end_check_seconds)


def _sleep_unless_ended(store: JobStore, job_id: str, seconds: float, step: float | None) -> None:
    """Sleep `seconds`, or less if the job ends meanwhile (its state read every `step`)."""
    if step is None or step >= seconds:
        time.sleep(seconds)
        return
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        time.sleep(min(step, left))
        if store.state(job_id).finished:
            return
