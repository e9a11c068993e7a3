"""`m3pipe probe`: is this worker healthy? For container health checks and k8s probes.

A ping (`ping_problem` in workers/app.py) proves the Celery main process answers; it says
nothing about the pool process, which may hang in a device call while the main process
chats happily. So the probe also reads the shard each pool process holds
(pipeline/runtime/shard_runner.py records it): a shard held longer than any shard may take
(shards are cut to half the visibility timeout) is wedged.
"""

from __future__ import annotations

import time

from pipeline.jobs.store import JobStore
from pipeline.jobs.worker_registry import shard_markers


def worker_problem(store: JobStore, name: str, max_shard_seconds: float) -> str | None:
    """Why worker `name` is unhealthy, or None."""
    record = store.worker_record(name)
    if not record:
        return f"no record of worker {name} in Redis (model not loaded yet, or gone)"
    for shard, started in shard_markers(record):  # one a slot
        held = time.time() - started
        if held > max_shard_seconds:
            return (
                f"worker {name} has held shard {shard} for {held:.0f}s, more "
                f"than the {max_shard_seconds:.0f}s any shard may take: wedged"
            )
    return None
