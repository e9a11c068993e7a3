"""Prometheus metrics of a worker process and of the autoscaler (docs/deploy.md lists them).

A worker's metrics live in its pool process, where shards run; it serves them on its own
port (`m3pipe worker --metrics-port`). Each process has its own registry plus the standard
process collector (RSS, CPU seconds, open files).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

log = logging.getLogger(__name__)

WORKER_METRICS_PORT = 9400  # GPU N serves on 9400 + N unless told otherwise
# A worker's slot N (N >= 1, pipeline/runtime/device_gate.py) serves its own metrics on
# the worker's port + 100 * N: above the 9400 + N of every GPU of a box.
SLOT_PORT_STRIDE = 100
AUTOSCALER_METRICS_PORT = 9390
SHARD_SECONDS_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


def slot_metrics_port(port: int, slot: int) -> int:
    """Where slot `slot` of a worker whose metrics port is `port` serves (0: none)."""
    return port + SLOT_PORT_STRIDE * slot if port else 0


def serve(registry: CollectorRegistry, port: int, address: str = "0.0.0.0") -> bool:
    """Serve `registry` on `port` (0: do not); False, with a warning, if the port is taken."""
    if port == 0:
        return False
    try:
        start_http_server(port, addr=address, registry=registry)
    except OSError as exc:
        log.warning("metrics not served: cannot listen on %s:%d: %s", address, port, exc)
        return False
    log.info("metrics on http://%s:%d/metrics", address, port)
    return True


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.info = Gauge(
            "m3pipe_worker_info", "The worker's loaded models: name, device, model, task",
            ["worker", "device", "model", "task"], registry=r,
        )  # fmt: skip
        self.documents = Counter("m3pipe_documents", "Documents encoded", registry=r)
        self.pairs = Counter("m3pipe_pairs", "(query, passage) pairs scored", registry=r)
        self.rows = Counter("m3pipe_rows", "Output rows written", registry=r)
        self.tokens = Counter("m3pipe_tokens", "Real tokens fed to the model", registry=r)
        self.padded_tokens = Counter(
            "m3pipe_padded_tokens", "Tokens including padding; tokens/padded = efficiency",
            registry=r,
        )  # fmt: skip
        self.shards = Counter(
            "m3pipe_shards", "Shard deliveries by outcome", ["outcome"], registry=r
        )
        self.padding_efficiency = Gauge(
            "m3pipe_padding_efficiency", "Real / padded tokens of the last shard", registry=r
        )
        self.encode_seconds = Histogram(
            "m3pipe_shard_encode_seconds", "Model time per shard", registry=r,
            buckets=SHARD_SECONDS_BUCKETS,
        )  # fmt: skip
        self.model_load_seconds = Gauge(
            "m3pipe_model_load_seconds", "Seconds each task's model took to load", ["task"],
            registry=r,
        )  # fmt: skip
        self.device_memory = Gauge(
            "m3pipe_device_memory_bytes",
            "CUDA memory: allocated, reserved, peak allocated, total (GPU workers only)",
            ["kind"],
            registry=r,
        )
        self.oom_splits = Counter(
            "m3pipe_oom_splits", "Batches split in two after running out of device memory",
            registry=r,
        )  # fmt: skip
        self.model_load_failures = Counter(
            "m3pipe_model_load_failures", "Failed attempts to load a task's model", ["task"],
            registry=r,
        )  # fmt: skip
        self.shard_started = Gauge(
            "m3pipe_shard_started_timestamp_seconds",
            "When the shard in hand started (unix time); 0 while idle: a wedged worker's ages",
            registry=r,
        )
        self.unreplicated_shards = Counter(
            "m3pipe_unreplicated_shards",
            "Shards marked done that fewer replicas than M3PIPE_REDIS_WAIT_REPLICAS had in time",
            registry=r,
        )
        self.device_gate_wait = Counter(
            "m3pipe_device_gate_wait_seconds",
            "Seconds this slot waited for the device while another slot of its worker held it",
            registry=r,
        )
        self.tenant_shards = Counter(
            "m3pipe_tenant_shards", "Shard deliveries by tenant and outcome", ["tenant", "outcome"],
            registry=r,
        )  # fmt: skip
        self.tenant_rows = Counter(
            "m3pipe_tenant_rows", "Output rows written, by tenant", ["tenant"], registry=r
        )
        for outcome in ("done", "failed", "retried", "skipped"):
            self.shards.labels(outcome)  # every series exists from the start
        for task in ("embed", "rerank"):
            self.model_load_failures.labels(task)

    def loaded(self, worker: str, device: str, model: str, task: str, seconds: float) -> None:
        self.info.labels(worker, device, model, task).set(1)
        self.model_load_seconds.labels(task).set(seconds)

    def shard_done(self, stats: Any, tenant: str) -> None:
        """`stats`: the shard's EncodeStats (embed) or RerankStats (rerank)."""
        self.shards.labels("done").inc()
        self.tenant_shards.labels(tenant, "done").inc()
        self.tenant_rows.labels(tenant).inc(stats.rows)
        if hasattr(stats, "pairs"):
            self.pairs.inc(stats.pairs)
        else:
            self.documents.inc(stats.documents)
        self.rows.inc(stats.rows)
        self.tokens.inc(stats.tokens)
        self.padded_tokens.inc(stats.padded_tokens)
        self.padding_efficiency.set(stats.padding_efficiency)
        self.encode_seconds.observe(stats.seconds)
        self.oom_splits.inc(stats.oom_splits)

    def shard_ended(self, outcome: str, tenant: str) -> None:
        self.shards.labels(outcome).inc()
        self.tenant_shards.labels(tenant, outcome).inc()

    def sample_device_memory(self, device: Any) -> None:
        if getattr(device, "type", None) != "cuda":
            return
        import torch

        self.device_memory.labels("allocated").set(torch.cuda.memory_allocated(device))
        self.device_memory.labels("reserved").set(torch.cuda.memory_reserved(device))
        self.device_memory.labels("peak").set(torch.cuda.max_memory_allocated(device))
        self.device_memory.labels("total").set(
            torch.cuda.get_device_properties(device).total_memory
        )


class AutoscalerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.backlog = Gauge(
            "m3pipe_autoscaler_backlog", "Shards queued plus in flight", ["queue"], registry=r
        )
        self.desired = Gauge("m3pipe_autoscaler_desired_workers", "Workers wanted", registry=r)
        self.running = Gauge(
            "m3pipe_autoscaler_running_workers", "Workers running, not stopping", registry=r
        )
        self.started = Counter(
            "m3pipe_autoscaler_workers_started", "Worker processes started", registry=r
        )
        self.died = Counter(
            "m3pipe_autoscaler_workers_died", "Workers that exited on their own", registry=r
        )
        self.backing_off = Gauge(
            "m3pipe_autoscaler_slots_backing_off",
            "Device slots waiting before a restart, their worker having died on its own",
            registry=r,
        )
        self.short_of_memory = Gauge(
            "m3pipe_autoscaler_slots_short_of_memory",
            "Device slots not started: their GPU had less free memory than "
            "M3PIPE_MIN_FREE_GPU_MIB when last checked",
            registry=r,
        )
