"""Per-process model bootstrap: each pool process loads its model once, when it starts.

`m3pipe worker` pins the device (CUDA_VISIBLE_DEVICES) and names the worker through the
environment before Celery forks, so the process sees exactly one GPU, or none.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time

from celery.signals import worker_process_init

from pipeline.jobs import JobStore
from pipeline.keys import worker_key
from pipeline.metrics import WorkerMetrics, serve
from pipeline.redis_url import connect
from pipeline.settings import Settings
from pipeline.shard_runner import WorkerRuntime

log = logging.getLogger(__name__)

WORKER_NAME_ENV = "M3PIPE_WORKER_NAME"
_WORKER_RECORD_TTL = 7 * 86400

_runtime: WorkerRuntime | None = None  # the one per-process state a worker keeps


def runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("the worker process has no model loaded (worker_process_init failed)")
    return _runtime


def build_runtime(settings: Settings) -> WorkerRuntime:
    from pipeline.model import load_model

    device = None if settings.worker_device == "auto" else settings.worker_device
    hostname = os.environ.get(WORKER_NAME_ENV) or f"worker@{socket.gethostname()}"
    started = time.perf_counter()
    model = load_model(
        settings.model,
        device=device,
        precision=settings.precision,
        cache_dir=settings.cache_dir,
        hub_timeout=settings.hub_timeout,
    )
    load_seconds = time.perf_counter() - started
    store = JobStore(connect(settings.broker, settings.redis_retry_seconds))
    key = worker_key(hostname)
    store.redis.delete(key)  # a pool process killed mid-shard left its shard marker
    store.redis.hset(
        key,
        mapping={
            "model": settings.model,
            "device": str(model.device),
            "pid": os.getpid(),
            "model_load_seconds": round(load_seconds, 3),
            "ready_at": time.time(),
        },
    )
    store.redis.expire(key, _WORKER_RECORD_TTL)
    log.info("%s: loaded %s on %s in %.1fs", hostname, settings.model, model.device, load_seconds)
    metrics = WorkerMetrics()
    metrics.loaded(hostname, str(model.device), settings.model, load_seconds)
    serve(metrics.registry, settings.metrics_port or 0)
    return WorkerRuntime(
        model=model,
        model_spec=settings.model,
        store=store,
        hostname=hostname,
        max_attempts=settings.max_attempts,
        retry_backoff_seconds=settings.retry_backoff_seconds,
        metrics=metrics,
    )


@worker_process_init.connect
def load_model_once(**_: object) -> None:
    global _runtime
    try:
        _runtime = build_runtime(Settings())
    except Exception:
        # A worker that cannot load its model must not take shards: stop it (warm shutdown)
        # instead of letting Celery restart this process in a loop.
        log.exception("model load failed; stopping the worker")
        os.kill(os.getppid(), signal.SIGTERM)
        raise
