"""The models a worker serves: one per task, each loaded on first use, once, and kept.

A worker serves both tasks from the same queues: the embedder (M3PIPE_MODEL) for embed
shards and the cross-encoder (M3PIPE_RERANK_MODEL) for rerank shards. A job whose model is
not the one this worker serves for its task is refused, so a worker never loads a model
named in a message (a model spec is a path or hub name: not for untrusted input).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.errors import PermanentError, RetryableError, WrongWorker
from pipeline.tasks import task_kind
from schemas.job import Task

if TYPE_CHECKING:
    from pipeline.settings import Settings

log = logging.getLogger(__name__)

Loader = Callable[[Task, str], Any]  # (task, spec) -> the loaded model
OnLoad = Callable[[Task, str, float], None]  # (task, spec, seconds) after each load


def load_task_model(
    task: Task, spec: str, *, device: str | None, precision: str | None, settings: Settings
) -> Any:
    """The model of `task` (the embedder, or the cross-encoder), with the cache and hub
    settings every command shares; ModelLoadError if it cannot load."""
    return task_kind(task).load_model(
        spec,
        device=device,
        precision=precision,
        cache_dir=settings.cache_dir,
        hub_timeout=settings.hub_timeout,
    )


@dataclass
class WorkerModels:
    specs: dict[Task, str]
    loader: Loader
    on_load: OnLoad | None = None
    on_load_failed: Callable[[Task, str], None] | None = None
    _loaded: dict[Task, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def spec(self, task: Task) -> str:
        return self.specs[task]

    def loaded(self, task: Task) -> bool:
        return task in self._loaded

    def check_job_model(self, task: Task, job_id: str, model: str) -> None:
        """WrongWorker unless this worker serves `model` for `task`: the shard is for
        another worker, not a failure of its own."""
        served = self.specs[task]
        if model != served:
            raise WrongWorker(
                f"job {job_id} waits for a worker serving {task.value} model {model!r} "
                f"(this one serves {served!r})"
            )

    def load(self, task: Task) -> Any:
        """The task's model, loading it now if this is its first use (ModelLoadError)."""
        with self._lock:
            if task not in self._loaded:
                spec = self.specs[task]
                started = time.perf_counter()
                try:
                    self._loaded[task] = self.loader(task, spec)
                except Exception:
                    if self.on_load_failed is not None:
                        self.on_load_failed(task, spec)
                    raise
                seconds = time.perf_counter() - started
                log.info("loaded %s model %s in %.1fs", task.value, spec, seconds)
                if self.on_load is not None:
                    self.on_load(task, spec, seconds)
            return self._loaded[task]

    def for_shard(self, task: Task) -> Any:
        """Like `load`, but a load failure is retryable: the shard goes back to the queue
        (and is dead-lettered after the worker's attempts), not failed on first sight."""
        try:
            return self.load(task)
        except PermanentError as exc:
            raise RetryableError(f"cannot load the {task.value} model: {exc}") from exc

    def devices(self) -> list[Any]:
        return [model.device for model in self._loaded.values()]
