"""How many workers a backlog needs: a pure function, so the policy is testable on tables.

Up at once when the backlog grows; down only after it has stayed low for the cooldown (a
worker costs a model load to start again); never below `min_workers`, never above the
devices. In-flight shards count as backlog, so a busy worker is never planned away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScaleLimits:
    max_workers: int  # the devices this autoscaler may use
    min_workers: int = 0
    shards_per_worker: int = 1  # backlog one worker is planned to absorb
    cooldown_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.max_workers < 1:
            raise ValueError("at least one device is needed")
        if not 0 <= self.min_workers <= self.max_workers:
            raise ValueError("--min must be between 0 and the number of devices")
        if self.shards_per_worker < 1:
            raise ValueError("--shards-per-worker must be >= 1")
        if self.cooldown_seconds < 0:
            raise ValueError("--cooldown must be >= 0")


@dataclass(frozen=True)
class ScaleDecision:
    desired: int
    low_since: float | None  # when fewer workers than running started to suffice


def desired_workers(
    backlog: int, running: int, limits: ScaleLimits, low_since: float | None, now: float
) -> ScaleDecision:
    """Workers to run now, given the backlog (queued + in flight) and those running.

    `low_since` is the previous decision's; pass it back each time.
    """
    wanted = math.ceil(backlog / limits.shards_per_worker)
    wanted = min(max(wanted, limits.min_workers), limits.max_workers)
    if running > limits.max_workers:
        running = limits.max_workers  # devices were taken away: shrink to them at once
    if wanted >= running:
        return ScaleDecision(wanted, None)
    since = now if low_since is None else low_since
    if now - since >= limits.cooldown_seconds:
        return ScaleDecision(wanted, None)
    return ScaleDecision(running, since)
