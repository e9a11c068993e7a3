"""Per-process bootstrap: each pool process builds its runtime once, when it starts.

The models of the tasks in M3PIPE_PRELOAD (default: embed) load here, so a worker whose
model cannot load stops before taking shards; the others load on their first shard.

`m3pipe worker` pins the device (CUDA_VISIBLE_DEVICES) and names the worker through the
environment before Celery forks, so the process sees exactly one GPU, or none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from typing import Any

from celery.signals import worker_process_init
from celery.utils.log import current_process_index

from pipeline.broker.redis_url import connect
from pipeline.errors import PipelineError
from pipeline.jobs.store import JobStore
from pipeline.ops.lifeline import set_parent_death_signal
from pipeline.runtime.device_gate import gate_from_environment
from pipeline.runtime.gpu_utilization import register_gpu_utilization
from pipeline.runtime.heap import collector_paused_while_loading
from pipeline.runtime.metrics import WorkerMetrics, serve, slot_metrics_port
from pipeline.runtime.worker_models import WorkerModels, load_task_model
from pipeline.runtime.worker_runtime import WorkerRuntime
from pipeline.settings import Settings
from pipeline.tasks import TASK_KINDS
from schemas.job import Task

log = logging.getLogger(__name__)

WORKER_NAME_ENV = "M3PIPE_WORKER_NAME"
_WORKER_RECORD_TTL = 7 * 86400

_runtime: WorkerRuntime | None = None  # the one per-process state a worker keeps


def runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("the worker process has no model loaded (worker_process_init failed)")
    return _runtime


def build_runtime(settings: Settings) -> WorkerRuntime:
    """The process's runtime; the models in M3PIPE_PRELOAD load now, the others on first use."""
    from pipeline.engine.precision import resolve_device

    device = None if settings.worker_device == "auto" else settings.worker_device
    torch_device = resolve_device(device)
    hostname = os.environ.get(WORKER_NAME_ENV) or f"worker@{socket.gethostname()}"
    slot = current_process_index(base=0) or 0  # this pool process's place among the slots
    store = JobStore(connect(settings.broker, settings.redis_retry_seconds))
    if settings.worker_slots == 1:
        store.forget_worker(hostname)
    else:  # the other slots' markers stay; `m3pipe worker` forgot the record at its start
        store.forget_slot(hostname, slot)
    # Written once the preloaded models are in: the record's presence means "ready".
    record: dict[Any, Any] = {
        "model": settings.model,
        "rerank_model": settings.rerank_model,
        "device": str(torch_device),
        "pid": os.getpid(),
    }
    metrics = WorkerMetrics()
    gate = gate_from_environment(metrics.device_gate_wait.inc)

    def loader(task: Task, spec: str) -> object:
        return load_task_model(
            task, spec, device=device, precision=settings.precision, settings=settings
        )

    def on_load(task: Task, spec: str, seconds: float) -> None:
        log.info("%s: loaded %s model %s on %s in %.1fs", hostname, task.value, spec,
                 torch_device, seconds)  # fmt: skip
        metrics.loaded(hostname, str(torch_device), spec, task.value, seconds)
        record[f"{task.value}_load_seconds"] = round(seconds, 3)
        if "ready_at" in record:  # a model loaded on its first shard
            store.note_worker_field(hostname, f"{task.value}_load_seconds", round(seconds, 3))

    models = WorkerModels(
        specs={task: kind.model_spec(settings) for task, kind in TASK_KINDS.items()},
        loader=loader,
        on_load=on_load,
        on_load_failed=lambda task, spec: metrics.model_load_failures.labels(task.value).inc(),
    )
    started = time.perf_counter()
    with collector_paused_while_loading(freeze=True):  # a pool process: its own
        for task in settings.preload_tasks:
            models.load(task)
    record["model_load_seconds"] = round(time.perf_counter() - started, 3)
    record["ready_at"] = time.time()
    store.register_worker(hostname, record, _WORKER_RECORD_TTL)
    if torch_device.type == "cuda":
        register_gpu_utilization(metrics.registry)
    serve(metrics.registry, slot_metrics_port(settings.metrics_port or 0, slot))
    return WorkerRuntime(
        models=models,
        store=store,
        hostname=hostname,
        max_attempts=settings.max_attempts,
        retry_backoff_seconds=settings.retry_backoff_seconds,
        metrics=metrics,
        output_roots=settings.output_root_list,
        input_roots=settings.input_root_list,
        piece_documents=settings.piece_documents,
        direct_writes=settings.direct_writes,
        slots=settings.worker_slots,
        wait_replicas=settings.redis_wait_replicas,
        wait_ms=settings.redis_wait_ms,
        slot=slot,
        device_gate=gate,
    )


@worker_process_init.connect
def load_model_once(**_: object) -> None:
    global _runtime
    # A pool process never outlives its worker: if the worker is killed outright, so is it
    # (else it would hold its shard and its device memory with nothing to report to).
    set_parent_death_signal(signal.SIGKILL)
    try:
        _runtime = build_runtime(Settings())
    except Exception as exc:
        # A worker that cannot start must not take shards: stop it (warm shutdown) instead
        # of letting Celery restart this process in a loop, and tell `m3pipe worker` why, so
        # it exits non-zero with that one line.
        log.exception("worker start-up failed; stopping the worker")
        note_startup_failure(exc)
        os.kill(os.getppid(), signal.SIGTERM)
        raise


STARTUP_FAILURE_ENV = "M3PIPE_STARTUP_FAILURE_FILE"


def note_startup_failure(exc: BaseException) -> None:
    """Write why the pool process could not start where `m3pipe worker` reads it."""
    path = os.environ.get(STARTUP_FAILURE_ENV)
    if path:
        with contextlib.suppress(OSError), open(path, "w") as note:
            note.write(f"{type(exc).__name__}: {exc}" if not isinstance(exc, PipelineError)
                       else str(exc))  # fmt: skip
