"""The commands on a job in Redis: `status`, `wait`, `jobs`, `cancel`, `retry`, `repair`."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from collections import deque

from pipeline.cli.options import job_store
from pipeline.errors import JobNotFound
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT
from pipeline.jobs.failures import describe_failures, failure_reasons
from pipeline.jobs.orphans import orphaned_shards
from pipeline.jobs.store import JobStore
from pipeline.settings import Settings
from schemas.job import JobStatus, Task


def _known_job(store: JobStore, job_id: str) -> bool:
    if store.exists(job_id):
        return True
    print(
        f"m3pipe: no job {job_id!r} in Redis (an ended job is forgotten after M3PIPE_JOB_TTL)",
        file=sys.stderr,
    )
    return False


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.job_view import StatusBar, describe
    from pipeline.jobs.watch import follow

    if args.job is None:
        return cmd_jobs(argparse.Namespace(limit=20, json=args.json, tenant=None), settings)
    store = job_store(settings)
    if not _known_job(store, args.job):
        return EXIT_FAILED
    if args.watch:
        bar = StatusBar(enabled=sys.stderr.isatty())
        try:
            status = follow(store, args.job, poll_seconds=1.0, on_status=bar)
        finally:
            bar.close()
    else:
        status = store.status(args.job)
    orphans = [] if status.state.finished else orphaned_shards(store, args.job)
    reasons = failure_reasons(store, args.job) if status.shards.failed else []
    unserved = None
    if not status.state.finished and status.shards.queued:
        unserved = no_live_worker_serves(store, args.job, settings)
    if args.json:
        extra = {
            "lost": status.lost_shards,
            "orphaned": orphans,
            "failures": [{"reason": r.reason, "shards": r.shards} for r in reasons],
            "unserved": unserved,
        }
        print(json.dumps({**status.model_dump(mode="json"), **extra}, indent=2))
    else:
        print(describe(status))
        if reasons:
            print("failed shards, by reason:")
            print("\n".join(describe_failures(reasons)))
        if unserved:
            print(f"unserved: {unserved}")
        if status.lost_shards:
            print(f"lost: {lost_advice(args.job, status.lost_shards)}")
        if orphans:
            print(
                f"orphaned: {len(orphans)} shard(s) queued or running with no message anywhere "
                f"({', '.join(map(str, orphans[:10]))}); `m3pipe retry {args.job}` re-sends "
                f"the ones whose message m3pipe kept, `m3pipe repair {args.job}` any of them"
            )
    return EXIT_OK


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.exit_codes import job_exit_code
    from pipeline.jobs.watch import follow

    store = job_store(settings)
    if not _known_job(store, args.job):
        return EXIT_FAILED
    seen: deque[JobStatus] = deque(maxlen=2)  # the last two statuses read
    quiet_since = time.monotonic()  # when the shard counts last changed

    def stalled() -> None:
        """JobStalled once nothing can run the rest: lost shards in two looks in a row, or
        queued or running shards with no message anywhere, looked for after each quiet spell
        (the look reads the queue: not on every poll)."""
        nonlocal quiet_since
        if len(seen) >= 2 and seen[-1].lost_shards and seen[-2].lost_shards:
            raise JobStalled(lost_advice(args.job, seen[-1].lost_shards))
        now = time.monotonic()
        if len(seen) >= 2 and seen[-1].shards != seen[-2].shards:
            quiet_since = now
        active = bool(seen) and (seen[-1].shards.queued + seen[-1].shards.running) > 0
        if active and now - quiet_since >= _quiet_spell(settings):
            quiet_since = now
            orphans = orphaned_shards(store, args.job)
            if orphans:
                raise JobStalled(orphan_advice(args.job, orphans))

    try:
        status = follow(store, args.job, poll_seconds=settings.poll_seconds,
                        timeout=args.timeout, check=stalled, on_status=seen.append)  # fmt: skip
    except JobStalled as exc:
        print(f"m3pipe wait: job {args.job} cannot end: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not status.state.finished:
        print(f"m3pipe wait: job {args.job} still {status.state.value}", file=sys.stderr)
        return EXIT_TIMEOUT
    ended = f"m3pipe wait: job {args.job} {status.state.value}"
    if status.error:
        ended += f": {status.error}"
    print(ended, file=sys.stderr)
    if status.shards.failed:
        print(f"failed shards ({status.shards.failed}), by reason:", file=sys.stderr)
        print("\n".join(describe_failures(failure_reasons(store, args.job))), file=sys.stderr)
    return job_exit_code(status)


class JobStalled(Exception):
    """The job cannot end as its state stands in Redis."""


def _quiet_spell(settings: Settings) -> float:
    """How long `wait` sees no shard change before it looks for queued or running shards
    with no message: 60 polls (30 s by default)."""
    return 60 * settings.poll_seconds


def orphan_advice(job_id: str, orphans: list[int]) -> str:
    return (
        f"{len(orphans)} shard(s) of job {job_id} are queued or running with no message "
        f"anywhere ({', '.join(map(str, orphans[:10]))}): lost (a failover, a producer killed "
        f"between registering and sending). `m3pipe repair {job_id}` sends them again"
    )


def lost_advice(job_id: str, lost: int) -> str:
    return (
        f"{lost} shard(s) of job {job_id} have no state in Redis: it lost writes (a failover "
        f"that dropped the last ones, an eviction). `m3pipe repair {job_id}` marks the "
        "written ones done from their part files and sends the others again"
    )


def no_live_worker_serves(
    store: JobStore, job_id: str, settings: Settings, timeout: float = 1.0
) -> str | None:
    """Why no shard of the job can run now, if no live worker serves its model: the
    workers answering a control ping within `timeout`, and the model each registered."""
    from workers.app import live_workers

    spec = store.spec(job_id)
    field = "model" if spec.task is Task.EMBED else "rerank_model"
    live = live_workers(settings, timeout)
    served = {name: store.worker_record(name).get(field) for name in live}
    if any(model == spec.model for model in served.values()):
        return None
    if not served:
        return f"no live worker answers (job {job_id} needs {spec.task.value} model {spec.model!r})"
    others = ", ".join(f"{name} serves {model!r}" for name, model in sorted(served.items()))
    return f"no live worker serves {spec.task.value} model {spec.model!r} ({others})"


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.cli.job_view import one_line

    store = job_store(settings)
    statuses = []
    for job_id in store.job_ids(args.limit):
        with contextlib.suppress(JobNotFound):  # expired since it was listed
            statuses.append(store.status(job_id))
    if args.tenant:
        statuses = [s for s in statuses if s.tenant == args.tenant]
    if args.json:
        print(json.dumps([s.model_dump(mode="json") for s in statuses], indent=2))
    elif not statuses:
        print("no jobs", file=sys.stderr)
    for status in [] if args.json else statuses:
        print(one_line(status))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    store = job_store(settings)
    if not _known_job(store, args.job):
        return EXIT_FAILED
    state = store.cancel(args.job)
    print(f"m3pipe cancel: job {args.job} is {state.value}", file=sys.stderr)
    return EXIT_OK


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.jobs.letters import LetterLost, read_letter
    from pipeline.jobs.resume import message_digest
    from pipeline.storage.location import open_location
    from schemas.job import ShardMessage
    from workers.app import shard_publisher

    store = job_store(settings)
    if not _known_job(store, args.job):
        return EXIT_FAILED
    letters = store.dead_letters(args.job)
    spec = store.spec(args.job)
    publish = shard_publisher(settings)
    out = functools.cache(lambda: open_location(spec.out))  # opened once, if a letter needs it
    sent = 0
    lost: list[int] = []

    def kept_message(shard: int, letter: str | None) -> ShardMessage | None:
        """The message a letter keeps; None (the shard counted lost) if there is none."""
        try:
            if letter is not None:
                message = read_letter(letter, out())
                registered = store.registered_digests(args.job, shard)[1]
                if registered is None or registered == message_digest(message):
                    return message
                print(f"m3pipe retry: shard {shard}: its letter is not the message "
                      "registered for it: not re-sent", file=sys.stderr)  # fmt: skip
        except LetterLost as exc:
            print(f"m3pipe retry: shard {shard}: {exc}", file=sys.stderr)
        lost.append(shard)
        return None

    for shard, raw in sorted(letters.items()):
        message = kept_message(shard, raw)
        if message is not None and store.reopen_shard(args.job, shard):
            publish(message, spec.queue, spec.priority)
            sent += 1
    orphans = [] if store.state(args.job).finished else orphaned_shards(store, args.job)
    for shard in orphans:
        message = kept_message(shard, store.retry_letter(args.job, shard))
        if message is not None:
            publish(message, spec.queue, spec.priority)
            sent += 1
    print(f"m3pipe retry: job {args.job}: {sent} shard(s) re-enqueued", file=sys.stderr)
    if lost:
        print(
            f"m3pipe retry: {len(lost)} shard(s) have no kept message "
            f"({', '.join(map(str, lost[:10]))}): `m3pipe repair {args.job}` sends queued "
            "ones again from the job's plan; otherwise `m3pipe cancel`, then `m3pipe submit "
            "--resume` with the same inputs and --out redoes them",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK if sent or not (letters or orphans) else EXIT_FAILED


def cmd_repair(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.jobs.repair import repair_job
    from pipeline.storage.location import open_location
    from workers.app import shard_publisher

    store = job_store(settings)
    if not _known_job(store, args.job):
        return EXIT_FAILED
    report = repair_job(store, args.job, shard_publisher(settings))
    inputs = 0
    for url in store.spec(args.job).inputs:
        with contextlib.suppress(OSError):
            inputs += open_location(url).size()
    print(
        f"m3pipe repair: job {args.job}: {report.reconciled} shard(s) found written and "
        f"marked done, {report.resent} sent again ({report.bytes_to_read:,} of the inputs' "
        f"{inputs:,} bytes to read again)"
        + (f"; the job is {report.final.value}" if report.final is not None else ""),
        file=sys.stderr,
    )
    if report.unplanned:
        shown = ", ".join(map(str, report.unplanned[:10]))
        print(
            f"m3pipe repair: {len(report.unplanned)} shard(s) not in the job's plan ({shown}): "
            f"they carry their documents; `m3pipe cancel {args.job}`, then `m3pipe submit "
            "--resume` with the same inputs and --out redoes them",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
