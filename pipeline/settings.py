"""Settings read from M3PIPE_* environment variables; CLI flags override them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.broker.redis_url import DEFAULT_BROKER_URL, DEFAULT_RETRY_SECONDS
from pipeline.jobs.keys import DEFAULT_QUEUE
from pipeline.storage.output_roots import parse_roots
from schemas.document import DEFAULT_MAX_RECORD_BYTES
from schemas.job import Task
from schemas.tenant import DEFAULT_TENANT

MAX_WORKER_SLOTS = 8  # pool processes of one worker, each with a copy of its model


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "m3pipe"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="M3PIPE_", extra="ignore")

    # Unset: `m3pipe run` starts an embedded Redis; other commands use DEFAULT_BROKER_URL.
    broker_url: str | None = None
    # Seconds a connected client keeps retrying while Redis is unreachable (e.g. restarting).
    redis_retry_seconds: float = Field(default=DEFAULT_RETRY_SECONDS, ge=0)
    # Run on a Redis whose maxmemory-policy evicts keys (refused otherwise; logged).
    allow_eviction: bool = False
    model: str = "BAAI/bge-m3"  # the embedder (task embed)
    rerank_model: str = "BAAI/bge-reranker-v2-m3"  # the cross-encoder (task rerank)
    cache_dir: Path = _default_cache_dir()
    # Seconds a hub download may take to answer before we give up with advice.
    hub_timeout: float = 10.0

    # Queue behaviour.
    queue: str = DEFAULT_QUEUE  # the base queue of a pool; tenants' queues are `<queue>.<tenant>`
    tenant: str = DEFAULT_TENANT  # of jobs submitted without --tenant
    # Each model's shards on a queue of its own, `<queue>.m-<name>-<hash>` (broker/routing.py).
    route_by_model: bool = False
    # Seconds before an unacknowledged shard is redelivered; must exceed the longest shard.
    visibility_timeout: int = Field(default=3600, ge=1)
    # The slowest worker's throughput you plan for: shards are cut so that their worst case
    # (every byte a token) fits in half the visibility timeout at this rate.
    planned_tokens_per_second: float = Field(default=2000.0, gt=0)
    result_expires: int = Field(default=86400, ge=60)  # seconds task results stay in Redis
    # Deliveries of one shard at most (crashes, lost workers and retries together), then it
    # is dead-lettered; retries of transient errors wait backoff * 4**n seconds (<= 600).
    max_attempts: int = Field(default=3, ge=1)
    retry_backoff_seconds: float = Field(default=5.0, ge=0)
    # The autoscaler starts a GPU worker only where NVML shows this much free device memory.
    min_free_gpu_mib: int = Field(default=4096, ge=0)
    # Documents of a shard a worker computes and writes at a time: the next piece computes
    # while the last is written (pipeline/storage/part_writer.py). 128 documents of 512
    # tokens are 128 MiB of float16 ColBERT vectors; a worker keeps five pieces' memory
    # (pipeline/engine/recycled.py), whose first use costs page faults: 256 took 2.1 s more
    # of system CPU than 128 in a 4,000-document `m3pipe encode` (docs/engine.md).
    piece_documents: int = Field(default=128, ge=1)
    # Local part files are written around the page cache (O_DIRECT) where the file system
    # takes it (pipeline/storage/direct_file.py); False: through it, as other files are.
    direct_writes: bool = True
    # A worker marks a shard done, then waits (Redis WAIT) until this many replicas have it,
    # at most M3PIPE_REDIS_WAIT_MS, before the shard's message is acknowledged: a failover
    # to a replica then never loses a done shard whose message is gone (docs/reliability.md).
    # 0: no WAIT.
    redis_wait_replicas: int = Field(default=0, ge=0)
    redis_wait_ms: int = Field(default=1000, ge=1)
    # Shards one worker holds at once, each in its own pool process with its own copy of the
    # model, taking turns on the device (pipeline/runtime/device_gate.py): one slot's host
    # work (reading, tokenizing, writing, recording) runs while the other's batches compute.
    worker_slots: int = Field(default=1, ge=1, le=MAX_WORKER_SLOTS)
    # Seconds a worker process may take to load its model before Celery gives up on it.
    model_load_timeout: float = Field(default=900.0, gt=0)

    # Producer.
    shard_docs: int = Field(default=1000, ge=1)
    shard_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)  # largest message payload
    max_queued: int = Field(default=32, ge=1)  # shards of one job waiting in Redis at most
    # One input record (a line, a CSV record, a .txt file, a Parquet row's text) at most;
    # a larger one is rejected while it is read, never held whole.
    max_record_bytes: int = Field(default=DEFAULT_MAX_RECORD_BYTES, ge=1024)
    poll_seconds: float = Field(default=0.5, gt=0)
    # Seconds an ended job's Redis keys are kept (its state, shard records, dead letters):
    # Redis memory stays bounded job after job. 0 keeps them until `m3pipe` forgets them.
    job_ttl: int = Field(default=7 * 24 * 3600, ge=0)

    # Worker process (set by `m3pipe worker` for the pool processes it forks).
    worker_device: str = "auto"  # cpu | cuda | auto
    # Tasks whose model a worker loads at start (comma-separated embed,rerank, or none);
    # the others load on their first shard and stay loaded.
    preload: str = "embed"
    precision: str = "auto"
    # Where workers may write (comma-separated absolute paths or URL prefixes); empty: any
    # absolute path or URL. Set it to the shared data volume: job records are not trusted.
    output_roots: str = ""
    # Where workers may read the inputs of shards sent by reference; empty: anywhere.
    input_roots: str = ""
    # Queue entries larger than this are dropped by the worker before they are decoded.
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    # Seconds between sweeps that hand unacknowledged shards of dead workers back to the
    # queue (once they are older than the visibility timeout).
    restore_interval: float = Field(default=10.0, gt=0)

    # Port of a worker's Prometheus metrics (0: off). Unset: 9400 + N for GPU N, 9400 on CPU.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    @field_validator("preload")
    @classmethod
    def _preload(cls, value: str) -> str:
        names = [n.strip() for n in value.split(",") if n.strip()]
        known = {task.value for task in Task}
        unknown = [n for n in names if n not in known and n != "none"]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}: use embed, rerank or none")
        return ",".join(n for n in names if n != "none")

    @field_validator("output_roots")
    @classmethod
    def _output_roots(cls, value: str) -> str:
        parse_roots(value)
        return value

    @field_validator("input_roots")
    @classmethod
    def _input_roots(cls, value: str) -> str:
        parse_roots(value, "input")
        return value

    @property
    def output_root_list(self) -> tuple[str, ...]:
        return parse_roots(self.output_roots)

    @property
    def input_root_list(self) -> tuple[str, ...]:
        return parse_roots(self.input_roots, "input")

    @property
    def preload_tasks(self) -> list[Task]:
        return [Task(name) for name in self.preload.split(",") if name]

    @property
    def broker(self) -> str:
        return self.broker_url or DEFAULT_BROKER_URL
