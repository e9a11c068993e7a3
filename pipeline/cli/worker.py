"""`m3pipe worker`: a Celery worker pinned to one device, checked before Celery starts."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from pipeline.cli.options import gpu_present, usage_error
from pipeline.cli.tenants import consumer_queues
from pipeline.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from pipeline.jobs.store import JobStore
from pipeline.runtime.openmp import forward_on_this_cpu, sleep_when_idle_unless_computing
from pipeline.settings import Settings
from schemas.job import Task


def preloaded_specs(settings: Settings) -> list[str]:
    """The model specs a worker loads at its start (M3PIPE_PRELOAD), in task order."""
    return [settings.model if task is Task.EMBED else settings.rerank_model
            for task in settings.preload_tasks]  # fmt: skip


def pin_device(device: str) -> tuple[str, str]:
    """Set CUDA_VISIBLE_DEVICES for this process and its children; (worker device, name stem)."""
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu", "cpu"
    if not device.isdigit():
        raise ValueError(f"--device must be a GPU index or cpu, not {device!r}")
    os.environ["CUDA_VISIBLE_DEVICES"] = physical_device(device)
    return "cuda", f"gpu{device}"


def physical_device(index: str) -> str:
    """The device to pin for GPU `index`: CUDA numbers GPUs within an inherited
    CUDA_VISIBLE_DEVICES (a scheduler's "4,5", or UUIDs), so index 1 there is its second
    entry, not physical GPU 1; with none inherited, the index itself."""
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is None:
        return index
    visible = [entry.strip() for entry in inherited.split(",") if entry.strip()]
    if int(index) >= len(visible):
        raise ValueError(
            f"--device {index}: only {len(visible)} GPU(s) visible "
            f"(CUDA_VISIBLE_DEVICES={inherited!r})"
        )
    return visible[int(index)]


def worker_metrics_port(flag: int | None, settings: Settings, device: str) -> int:
    from pipeline.runtime.metrics import WORKER_METRICS_PORT

    if flag is not None:
        return flag
    if settings.metrics_port is not None:
        return settings.metrics_port
    return WORKER_METRICS_PORT + (int(device) if device.isdigit() else 0)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.bootstrap import WORKER_NAME_ENV

    device = args.device or ("0" if gpu_present() else "cpu")
    try:
        # Before anything touches CUDA: the pool processes inherit the pinning.
        worker_device, stem = pin_device(device)
        if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
            raise ValueError("--metrics-port must be 0-65535")
    except ValueError as exc:
        return usage_error(exc)
    name = args.name or f"{stem}@{socket.gethostname()}"
    os.environ["M3PIPE_WORKER_DEVICE"] = worker_device
    if worker_device == "cuda":
        # Batch shapes vary widely (20 to 8192 tokens): without expandable segments the
        # caching allocator fragments and runs out of memory it holds (docs/deploy.md).
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    os.environ[WORKER_NAME_ENV] = name
    os.environ["M3PIPE_PRECISION"] = args.precision or settings.precision
    metrics_port = worker_metrics_port(args.metrics_port, settings, device)
    os.environ["M3PIPE_METRICS_PORT"] = str(metrics_port)
    if args.model:
        os.environ["M3PIPE_MODEL"] = args.model
    if args.rerank_model:
        os.environ["M3PIPE_RERANK_MODEL"] = args.rerank_model
    if args.preload is not None:
        os.environ["M3PIPE_PRELOAD"] = args.preload
    if args.slots is not None:
        os.environ["M3PIPE_WORKER_SLOTS"] = str(args.slots)
    try:
        slots = Settings().worker_slots  # the pool processes read them: refuse a bad value here
    except ValidationError as exc:
        return usage_error(exc)
    try:
        served = Settings()  # with --model and --rerank-model applied
        queues = ",".join(consumer_queues(args.queues, args.tenants, served, args.route_by_model))
    except ValueError as exc:
        return usage_error(exc)

    if args.own_process:  # before torch loads: OpenMP spins only for a forward on this CPU
        on_gpu = worker_device == "cuda"
        sleep_when_idle_unless_computing(forward_on_this_cpu(preloaded_specs(served), on_gpu))
    check_worker_can_start(Settings(), name)
    from pipeline.runtime.device_gate import GATE_FILE_ENV
    from workers import app as celery_app
    from workers.bootstrap import STARTUP_FAILURE_ENV

    with tempfile.TemporaryDirectory(prefix="m3pipe-worker-") as scratch:
        failure = Path(scratch) / "startup-failure"
        os.environ[STARTUP_FAILURE_ENV] = str(failure)
        if slots > 1:  # the slots take turns on the device: pipeline/runtime/device_gate.py
            os.environ[GATE_FILE_ENV] = str(Path(scratch) / "device-gate")
        code = celery_app.run_worker(name, queues.split(","), slots)
        if failure.exists():  # the pool process could not start: say why, exit non-zero
            print(f"m3pipe worker: cannot start: {failure.read_text()}", file=sys.stderr)
            return EXIT_FAILED
    if code not in (EXIT_OK, EXIT_INTERRUPTED):  # an unrecoverable error: its log says which
        print(f"m3pipe worker: Celery's worker stopped with exit status {code}", file=sys.stderr)
        return EXIT_FAILED
    return code


def check_worker_can_start(settings: Settings, name: str) -> None:
    """What would stop a worker's pool process, found before Celery starts: Redis out of
    reach or refusing the password (RedisConnectionError), a preloaded model that is not
    there (ModelLoadError, with what to do), a Redis that evicts keys or is a cluster
    (RedisUnsuitable). Each is one line from `main`, exit 1. Then an earlier record of
    worker `name` is forgotten: its pool processes register once their models are in."""
    from pipeline.broker.redis_checks import check_redis
    from pipeline.broker.redis_url import connect
    from pipeline.engine.model_source import resolve_model_path

    client = connect(settings.broker, settings.redis_retry_seconds)
    try:
        check_redis(client, settings.allow_eviction)
        JobStore(client).forget_worker(name)
    finally:
        client.close()
    for task, spec in zip(settings.preload_tasks, preloaded_specs(settings), strict=True):
        resolve_model_path(
            spec, settings.cache_dir, settings.hub_timeout, reranker=task is Task.RERANK
        )
