"""`m3pipe autoscale`: keep as many worker processes as the queue backlog needs.

One slot per device (`--devices 0,1,2,3` or `cpu:2`). Each poll reads the backlog (queued +
in flight, pipeline/broker/backlog.py), asks pipeline/ops/scaling.py how many workers to run, starts
`m3pipe worker --device N` on free slots, and stops surplus ones with SIGTERM: Celery's warm
shutdown finishes the shard in hand, so nothing is lost. A worker that dies is replaced on
the next poll if the backlog still needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from pipeline.broker.backlog import backlogs
from pipeline.ops.gpus import gpu_free_bytes
from pipeline.ops.process_group import stop_process_groups
from pipeline.ops.scaling import ScaleDecision, ScaleLimits, desired_workers
from pipeline.ops.worker_process import spawn_worker
from pipeline.runtime.metrics import AutoscalerMetrics

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 600.0  # a stopping worker finishes its shard first
# A worker that dies on its own is started again after a pause that doubles with each death
# in a row (a GPU gone, a model that does not load), so a broken slot does not restart on
# every poll; one that ran this long before dying starts a new count.
RESTART_BACKOFF_SECONDS = (5.0, 300.0)
MEMORY_RECHECK_SECONDS = 30.0  # a GPU short of free memory is looked at again after this
HEALTHY_RUN_SECONDS = 120.0


def parse_devices(spec: str) -> list[str]:
    """`0,1,3` -> ['0', '1', '3']; `cpu:2` -> ['cpu', 'cpu']; `cpu` -> ['cpu']."""
    devices: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if part.isdigit():
            devices.append(part)
        elif part == "cpu":
            devices.append("cpu")
        elif part.startswith("cpu:") and part[4:].isdigit() and int(part[4:]) > 0:
            devices.extend(["cpu"] * int(part[4:]))
        else:
            raise ValueError(f"--devices: {part!r} is not a GPU index, cpu or cpu:N")
    if len(set(d for d in devices if d != "cpu")) != sum(d != "cpu" for d in devices):
        raise ValueError("--devices: a GPU is listed twice")
    return devices


@dataclass
class Slot:
    device: str
    process: subprocess.Popen[bytes] | None = None
    name: str = ""
    stopping: bool = False
    started_at: float = 0.0
    deaths_in_a_row: int = 0
    not_before: float = 0.0  # no start before this (clock): backing off after deaths
    short_of_memory: bool = False  # its GPU had too little free memory at the last look


def restart_delay(deaths_in_a_row: int) -> float:
    """Seconds before a slot whose worker died `deaths_in_a_row` times is started again."""
    first, cap = RESTART_BACKOFF_SECONDS
    return min(cap, first * 2 ** max(deaths_in_a_row - 1, 0))


def check_devices(devices: list[str], visible_gpus: int) -> None:
    """ValueError naming a GPU index the machine does not have (the slot would fail and
    restart for ever)."""
    missing = sorted({d for d in devices if d != "cpu" and int(d) >= visible_gpus}, key=int)
    if missing:
        raise ValueError(
            f"--devices: GPU {', '.join(missing)} not present: this machine shows "
            f"{visible_gpus} GPU(s)"
        )


@dataclass
class Autoscaler:
    devices: list[str]
    limits: ScaleLimits
    queues: list[str]
    client: redis.Redis
    env: dict[str, str]
    log_dir: Path
    metrics: AutoscalerMetrics = field(default_factory=AutoscalerMetrics)
    worker_metrics_base: int = 0  # slot i's worker serves metrics on base + i (0: none)
    # A GPU slot starts only with this much free device memory (0: no check); None from
    # `free_memory`: unknown, started as before.
    min_free_bytes: int = 0
    free_memory: Callable[[str], int | None] = gpu_free_bytes
    clock: Callable[[], float] = time.monotonic
    slots: list[Slot] = field(init=False)
    low_since: float | None = field(default=None, init=False)
    started: int = field(default=0, init=False)  # worker processes started so far
    restarts_needed: int = field(default=0, init=False)  # workers that died on their own
    last: ScaleDecision | None = field(default=None, init=False)
    backlog: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.slots = [Slot(device) for device in self.devices]

    @property
    def running(self) -> int:
        """Workers alive and not asked to stop."""
        return sum(s.process is not None and not s.stopping for s in self.slots)

    def step(self) -> ScaleDecision:
        """One poll: reap, read the backlog, start or stop workers to match the decision."""
        self._reap()
        per_queue = backlogs(self.client, self.queues)
        self.backlog = sum(b.total for b in per_queue.values())
        decision = desired_workers(
            self.backlog, self.running, self.limits, self.low_since, self.clock()
        )
        self.low_since = decision.low_since
        for queue, found in per_queue.items():
            self.metrics.backlog.labels(queue).set(found.total)
        self.metrics.desired.set(decision.desired)
        if self.last is None or decision.desired != self.last.desired:
            log.info("backlog %d: %d -> %d workers", self.backlog, self.running, decision.desired)
        self.last = decision
        if decision.desired > self.running:
            now = self.clock()
            wanted = decision.desired - self.running
            for slot in [s for s in self.slots if s.process is None and now >= s.not_before]:
                if wanted == 0:
                    break
                if self._has_memory(slot, now):
                    self._start(slot)
                    wanted -= 1
        elif decision.desired < self.running:
            busy = [s for s in self.slots if s.process is not None and not s.stopping]
            for slot in busy[decision.desired :][::-1]:  # the last started go first
                self._stop(slot)
        self.metrics.backing_off.set(
            sum(
                s.process is None and self.clock() < s.not_before and not s.short_of_memory
                for s in self.slots
            )
        )
        self.metrics.short_of_memory.set(
            sum(s.process is None and s.short_of_memory for s in self.slots)
        )
        self.metrics.running.set(self.running)
        return decision

    def _has_memory(self, slot: Slot, now: float) -> bool:
        """Whether the slot's GPU has the free memory a worker needs; if not, the slot waits
        MEMORY_RECHECK_SECONDS, and the log and metrics say why."""
        if slot.device == "cpu" or self.min_free_bytes <= 0:
            return True
        free = self.free_memory(slot.device)
        if free is None or free >= self.min_free_bytes:
            slot.short_of_memory = False
            return True
        if not slot.short_of_memory:
            log.warning(
                "GPU %s has %d MiB free, less than M3PIPE_MIN_FREE_GPU_MIB (%d): no worker "
                "started there (another process holds it?); looking again every %.0fs",
                slot.device, free >> 20, self.min_free_bytes >> 20, MEMORY_RECHECK_SECONDS,
            )  # fmt: skip
        slot.short_of_memory = True
        slot.not_before = now + MEMORY_RECHECK_SECONDS
        return False

    def _start(self, slot: Slot) -> None:
        self.started += 1
        stem = "cpu" if slot.device == "cpu" else f"gpu{slot.device}"
        slot.name = f"{stem}-{self.started}@{socket.gethostname()}"
        log_path = self.log_dir / f"{slot.name.split('@')[0]}.log"
        index = self.slots.index(slot)
        slot.process = spawn_worker(
            slot.device,
            slot.name,
            self.env,
            log_path,
            cpu_workers=self.devices.count("cpu"),
            queues=",".join(self.queues),
            metrics_port=self.worker_metrics_base + index if self.worker_metrics_base else 0,
        )
        self.metrics.started.inc()
        slot.stopping = False
        slot.started_at = self.clock()
        log.info("started worker %s (pid %d, log %s)", slot.name, slot.process.pid, log_path)

    def _stop(self, slot: Slot) -> None:
        assert slot.process is not None
        slot.stopping = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(slot.process.pid, signal.SIGTERM)  # warm shutdown
        log.info("stopping worker %s (warm shutdown: it finishes its shard)", slot.name)

    def _reap(self) -> None:
        for slot in self.slots:
            if slot.process is None or slot.process.poll() is None:
                continue
            code = slot.process.returncode
            if slot.stopping:
                log.info("worker %s stopped (exit %d)", slot.name, code)
            else:
                self.restarts_needed += 1
                self.metrics.died.inc()
                now = self.clock()
                healthy = now - slot.started_at >= HEALTHY_RUN_SECONDS
                slot.deaths_in_a_row = 1 if healthy else slot.deaths_in_a_row + 1
                delay = restart_delay(slot.deaths_in_a_row)
                slot.not_before = now + delay
                log.warning(
                    "worker %s exited on its own (exit %d, %d time(s) in a row on device %s; "
                    "see its log); the slot starts again in %.0fs at the earliest",
                    slot.name, code, slot.deaths_in_a_row, slot.device, delay,
                )  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                os.killpg(slot.process.pid, signal.SIGKILL)  # pool children left behind
            slot.process, slot.stopping = None, False

    def run(self, stop: threading.Event, poll_seconds: float) -> None:
        """Poll until `stop` is set, then stop every worker (warm shutdown)."""
        try:
            while not stop.is_set():
                try:
                    self.step()
                except redis.RedisError as exc:  # keep the workers; try again next poll
                    log.warning("cannot read the backlog: %s", exc)
                stop.wait(poll_seconds)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        processes = [s.process for s in self.slots if s.process is not None]
        log.info("stopping %d worker(s)", len(processes))
        stop_process_groups(processes, STOP_GRACE_SECONDS)
        for slot in self.slots:
            slot.process, slot.stopping = None, False
