"""`m3pipe run`: Redis (embedded unless configured), N workers, submit, follow, clean up.

Produces the same files as `m3pipe submit` with `m3pipe worker`s, because it is exactly
that: real worker processes consuming a real queue.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.broker.redis_checks import check_redis
from pipeline.errors import WorkersGone
from pipeline.exit_codes import EXIT_FAILED, job_exit_code
from pipeline.jobs.resume import previous_spec
from pipeline.jobs.store import JobStore
from pipeline.jobs.watch import follow
from pipeline.ops.embedded_redis import EmbeddedRedis
from pipeline.ops.gpus import visible_gpu_count
from pipeline.ops.lifeline import owned_scratch_dir
from pipeline.ops.process_group import kill_process_groups, stop_process_groups
from pipeline.ops.worker_process import spawn_worker
from pipeline.settings import Settings
from pipeline.storage.location import open_location
from pipeline.storage.output_dir import check_output_dir
from pipeline.tasks import task_kind
from producers.submit import SubmitRequest, SubmitResult, submit_job
from schemas.job import JobState, JobStatus

STOP_GRACE_SECONDS = 30.0
SCRATCH_PREFIX = "m3pipe-run-"
LOG_TAIL_LINES = 15


def worker_devices(count: int | None, force_cpu: bool) -> list[str]:
    """One worker per visible GPU by default; CPU workers where there is none (or forced)."""
    gpus = 0 if force_cpu else visible_gpu_count()  # without a CUDA context in this process
    if gpus:
        return [str(i) for i in range(min(count or gpus, gpus))]
    return ["cpu"] * (count or 1)


class WorkerPool:
    """`m3pipe worker` subprocesses, each in its own process group, logging to a file."""

    def __init__(self, devices: list[str], env: dict[str, str], log_dir: Path, tag: str) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        host = socket.gethostname()
        cpu_workers = devices.count("cpu")
        for index, device in enumerate(devices):
            stem = f"cpu{index}" if device == "cpu" else f"gpu{device}"
            log = log_dir / f"{stem}.log"
            name = f"{stem}-{tag}@{host}"
            self.processes.append(spawn_worker(device, name, env, log, cpu_workers=cpu_workers))
            self.logs.append(log)

    def alive(self) -> int:
        return sum(p.poll() is None for p in self.processes)

    def check(self) -> None:
        if self.processes and not self.alive():
            raise WorkersGone("every worker process exited:\n" + self.log_tails())

    def log_tails(self) -> str:
        parts = []
        for log in self.logs:
            lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL to the whole group of any that linger."""
        stop_process_groups(self.processes, STOP_GRACE_SECONDS)

    def kill(self) -> None:
        """SIGKILL every worker's group at once."""
        kill_process_groups(self.processes)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Clean up on SIGTERM as on Ctrl-C: stop workers, stop Redis."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_local(
    request: SubmitRequest,
    settings: Settings,
    *,
    workers: int | None,
    force_cpu: bool,
    precision: str,
    slots: int | None = None,
    on_status: Callable[[JobStatus], None] | None = None,
) -> int:
    # Fail on bad inputs or a used output directory before starting any process.
    kind = task_kind(request.task)
    for path in request.inputs:
        kind.detect_format(path, request.input_format)
    if request.resume:
        previous_spec(request.out)  # something to resume, before starting anything
    check_output_dir(request.out, request.overwrite, request.resume)  # submit owns, clears it
    reused = [request.reuse] if request.reuse is not None else []
    devices = worker_devices(workers, force_cpu)
    with contextlib.ExitStack() as stack, _sigterm_as_interrupt():
        scratch = owned_scratch_dir(SCRATCH_PREFIX)
        stack.callback(shutil.rmtree, scratch, True)
        embedded = settings.broker_url is None
        url = settings.broker_url
        broker = "configured broker"
        if url is None:
            url = stack.enter_context(EmbeddedRedis(scratch / "redis")).url
            broker = "embedded Redis"
        settings = settings.model_copy(update={"broker_url": url})
        store = JobStore.connect(url, settings.redis_retry_seconds)
        check_redis(store.redis, settings.allow_eviction)  # before any worker starts
        scratch_tmp = scratch / "tmp"
        scratch_tmp.mkdir()
        env = {
            **os.environ,
            "M3PIPE_BROKER_URL": url,
            # The job's model, loaded at start; a worker of `run` serves this job only.
            kind.model_env: request.model,
            "M3PIPE_PRELOAD": request.task.value,
            "M3PIPE_PRECISION": precision,
            "M3PIPE_QUEUE": request.queue,
            "M3PIPE_ROUTE_BY_MODEL": "0",  # request.queue is already this job's route
            "M3PIPE_VISIBILITY_TIMEOUT": str(settings.visibility_timeout),
            "M3PIPE_METRICS_PORT": "0",  # a one-shot run serves no metrics
            **({"M3PIPE_WORKER_SLOTS": str(slots)} if slots is not None else {}),
            # Its workers write this job's output and nothing else.
            "M3PIPE_OUTPUT_ROOTS": settings.output_roots or open_location(request.out).uri,
            # ... and read (shards by reference) this job's inputs, and the output it
            # reuses, and nothing else.
            "M3PIPE_INPUT_ROOTS": settings.input_roots
            or ",".join(open_location(path).uri for path in [*request.inputs, *reused]),
            # Their temp files live in the scratch directory and go with it (even after a
            # kill -9: the next run removes a dead run's scratch directory).
            "TMPDIR": str(scratch_tmp),
        }
        pool = WorkerPool(devices, env, scratch, tag=scratch.name[-6:])
        # Celery's import (~0.1-0.2 s) after the workers' start, which is on the job's path.
        from workers.app import shard_publisher

        ended: list[bool] = []  # set once the job has ended
        # An embedded Redis serves this job alone: once the job has ended, its workers hold
        # nothing (every shard is done or moot, and the broker goes with them), so they are
        # killed at once instead of a warm shutdown (~1.5 s). Otherwise warm, as always.
        stack.callback(lambda: pool.kill() if ended and embedded else pool.stop())
        print(
            f"m3pipe run: {len(devices)} worker(s) on {', '.join(devices)}, {broker}",
            file=sys.stderr,
        )
        registered = threading.Event()
        outcome: dict[str, object] = {}

        def on_registered(job_id: str) -> None:
            outcome["job_id"] = job_id
            registered.set()

        def produce() -> None:
            try:
                outcome["result"] = submit_job(
                    request, store, shard_publisher(settings), on_registered
                )
            except BaseException as exc:  # reported by the main thread
                outcome["error"] = exc
            finally:
                registered.set()

        producer = threading.Thread(target=produce, name="producer", daemon=True)
        producer.start()
        registered.wait()
        if "job_id" not in outcome:
            producer.join()
            raise outcome["error"]  # type: ignore[misc]
        job_id = str(outcome["job_id"])

        def check() -> None:
            if "error" in outcome:
                raise outcome["error"]  # type: ignore[misc]
            pool.check()

        try:
            status = follow(store, job_id, poll_seconds=0.2, check=check, on_status=on_status,
                            end_check_seconds=0.02)  # fmt: skip
            if status.state.finished:
                ended.append(True)
        except WorkersGone as exc:
            store.end(job_id, JobState.FAILED, "every worker process exited")
            print(f"m3pipe run: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            store.cancel(job_id)  # on a shared broker, other workers skip what is left
            raise
        producer.join()
        result: SubmitResult | None = outcome.get("result")  # type: ignore[assignment]
        print(_summary(status, result), file=sys.stderr)
        if status.state is not JobState.COMPLETED:
            print(pool.log_tails(), file=sys.stderr)
        return job_exit_code(status)


def _summary(status: JobStatus, result: SubmitResult | None) -> str:
    rejected = status.rejected or 0
    return (
        f"m3pipe run: job {status.job_id} {status.state.value}: {status.documents_done:,} "
        f"{status.task.item}s -> {status.rows_done:,} rows in {status.shards.done} file(s) under "
        f"{status.out}; {status.tokens_done:,} tokens at {status.tokens_per_second:,.0f} "
        f"tokens/s; {rejected} rejected"
        + (f", {status.shards.failed} shard(s) failed" if status.shards.failed else "")
    )
