"""How a job is shown: its status on one screen or one line, and a live progress bar."""

from __future__ import annotations

import sys
import time

from schemas.job import JobStatus


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


class StatusBar:
    """A job's items done of its total, shards done and tokens/s, redrawn from each status
    `follow` reads (pipeline/jobs/watch.py); on stderr, and only if `enabled`."""

    def __init__(self, enabled: bool) -> None:
        from tqdm import tqdm

        self.enabled = enabled
        self._bar = tqdm(unit="doc", disable=not enabled or None, dynamic_ncols=True,
                         file=sys.stderr)  # fmt: skip

    def __call__(self, status: JobStatus) -> None:
        if not self.enabled:
            return
        self._bar.total = status.documents if status.submitted else None
        self._bar.n = status.documents_done
        self._bar.set_postfix_str(
            f"{status.shards.done} shards, {status.tokens_per_second:,.0f} tok/s", refresh=False
        )
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
