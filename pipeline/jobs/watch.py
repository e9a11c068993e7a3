"""Following a job: a one-screen summary, a live progress bar, and waiting for the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from pipeline.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_REJECTS
from pipeline.jobs.store import JobStore
from schemas.job import JobState, JobStatus


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def unit(status: JobStatus) -> str:
    """What the job's items are: documents to embed, or pairs to score."""
    return f"{status.task.item}s"


def describe(status: JobStatus) -> str:
    shards = status.shards
    total = "?" if shards.total is None else str(shards.total)
    documents = f"{status.documents_done:,}/{status.documents:,}"
    if not status.submitted:
        documents += " (still submitting)"
    lines = [
        f"job {status.job_id}: {status.state.value} ({status.task.value})",
        f"  shards     {shards.done}/{total} done, {shards.running} running, "
        f"{shards.queued} queued, {shards.failed} failed"
        + (f", {shards.cancelled} cancelled" if shards.cancelled else ""),
        f"  {unit(status):<10} {documents}, {status.rows_done:,} rows"
        + (f", {status.rejected:,} rejected" if status.rejected else ""),
        f"  tokens     {status.tokens_done:,} at {status.tokens_per_second:,.0f} tokens/s, "
        f"ETA {_duration(status.eta_seconds)}",
        f"  model      {status.model} (queue {status.queue})",
        f"  tenant     {status.tenant}, priority {status.priority.value}",
        f"  out        {status.out}",
    ]
    if status.error:
        lines.append(f"  error      {status.error}")
    if status.waiting:
        lines.append(f"  waiting    {status.waiting}")
    if status.expires_at:
        lines.append(f"  kept until {_when(status.expires_at)} (then Redis forgets the job)")
    return "\n".join(lines)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def one_line(status: JobStatus) -> str:
    total = "?" if status.shards.total is None else status.shards.total
    return (
        f"{status.job_id}  {status.state.value:<24} {status.tenant}/{status.priority.value:<6} "
        f"shards {status.shards.done}/{total}  "
        f"{status.task.value:<6} {status.documents_done:,}/{status.documents:,}  "
        f"{_when(status.created_at)}"
        + (f"  kept until {_when(status.expires_at)}" if status.expires_at else "")
    )


def follow(
    store: JobStore,
    job_id: str,
    *,
    bar: bool,
    poll_seconds: float = 0.5,
    timeout: float | None = None,
    check: Callable[[], None] | None = None,
) -> JobStatus:
    """Poll until the job ends (or `timeout`); with `bar`, draw a live progress bar.

    `check` runs every poll and may raise to stop following (e.g. all workers died).
    """
    from tqdm import tqdm

    deadline = None if timeout is None else time.monotonic() + timeout
    progress = tqdm(unit="doc", disable=not bar or None, dynamic_ncols=True, file=sys.stderr)
    try:
        while True:
            status = store.status(job_id)
            if bar:
                progress.total = status.documents if status.submitted else None
                progress.n = status.documents_done
                progress.set_postfix_str(
                    f"{status.shards.done} shards, {status.tokens_per_second:,.0f} tok/s",
                    refresh=False,
                )
                progress.refresh()
            if status.state.finished:
                return status
            if deadline is not None and time.monotonic() > deadline:
                return status
            if check is not None:
                check()
            time.sleep(poll_seconds)
    finally:
        progress.close()


def exit_code(status: JobStatus) -> int:
    """0 completed cleanly, 3 completed with rejected records, 1 anything else."""
    if status.state is JobState.COMPLETED:
        return EXIT_REJECTS if status.rejected else EXIT_OK
    return EXIT_FAILED
