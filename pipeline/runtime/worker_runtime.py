"""What a worker process holds between shards: its models, the engines made for jobs'
options, the job specs it has read, and its settings (roots, pieces, slots, replicas)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from pipeline.engine.batching import share_budget
from pipeline.errors import JobNotFound, UnknownJob
from pipeline.jobs.store import JobStore
from pipeline.runtime.device_gate import DeviceGate
from pipeline.runtime.metrics import WorkerMetrics
from pipeline.runtime.worker_models import WorkerModels
from pipeline.tasks import TaskEngine, task_kind
from schemas.job import JobSpec, Task

_SPEC_CACHE_SIZE = 64


@dataclass
class WorkerRuntime:
    """What a worker process holds between shards: its models, engines and job specs."""

    models: WorkerModels
    store: JobStore
    hostname: str
    max_attempts: int = 3
    retry_backoff_seconds: float = 5.0
    output_roots: tuple[str, ...] = ()  # where jobs may write; empty: anywhere absolute
    input_roots: tuple[str, ...] = ()  # where shards by reference may be read; empty: anywhere
    piece_documents: int = 128  # of a shard, computed and written at a time
    direct_writes: bool = True  # local parts around the page cache (O_DIRECT)
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    # Slots (pool processes) sharing this worker's device, and the gate they take turns
    # at (pipeline/runtime/device_gate.py); one slot: no gate.
    slots: int = 1
    slot: int = 0
    device_gate: DeviceGate | None = None
    # Replicas that must have a shard's done state before its message is acknowledged
    # (Redis WAIT, at most wait_ms); 0: none.
    wait_replicas: int = 0
    wait_ms: int = 1000
    _engines: dict[tuple[Task, Hashable], TaskEngine] = field(default_factory=dict)
    _specs: dict[str, JobSpec] = field(default_factory=dict)

    def engine(self, spec: JobSpec) -> TaskEngine:
        """The engine for the job's task and options, made on first use and kept."""
        kind = task_kind(spec.task)
        key = (spec.task, kind.job_options(spec))
        if key not in self._engines:
            engine = kind.engine(self.models.for_shard(spec.task), key[1])
            if self.device_gate is not None:
                engine.device_gate = self.device_gate
            # The slots' caching allocators each keep what their batches used: a CUDA
            # budget taken from free memory is shared between them.
            on_cuda = any(device.type == "cuda" for device in self.models.devices())
            if self.slots > 1 and on_cuda and not getattr(key[1], "batch_tokens", None):
                engine.batch_tokens = share_budget(engine.batch_tokens, self.slots)
            self._engines[key] = engine
        return self._engines[key]

    def job_spec(self, job_id: str) -> JobSpec:
        if job_id not in self._specs:
            if len(self._specs) >= _SPEC_CACHE_SIZE:
                self._specs.clear()
            try:
                self._specs[job_id] = self.store.spec(job_id)
            except JobNotFound:
                raise UnknownJob(f"job {job_id} is not registered in Redis") from None
        return self._specs[job_id]
