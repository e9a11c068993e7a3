"""Tenants and priorities: which queue a job's shards go to, and in which order they are taken.

Each tenant has its own queue (`<base>.<tenant>`; the `default` tenant keeps the base queue,
so single-team clusters see no change). A job's priority is the message priority of its
shards: Celery's Redis transport keeps one list per priority step and a worker asks for
every step of every queue it consumes in one BRPOP, highest step first, rotating the queues
within a step after each delivery. So across a pool, high-priority shards go first, and
tenants at the same priority take turns.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
TenantName = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
DEFAULT_TENANT = "default"


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def broker_priority(self) -> int:
        """kombu's Redis priority step (0 is taken first; a message without one gets 0, so
        every m3pipe message carries its step explicitly)."""
        return {Priority.HIGH: 0, Priority.NORMAL: 3, Priority.LOW: 6}[self]


class TenantLimits(BaseModel):
    """A tenant's quotas; None means no limit. Stored in Redis (`m3pipe tenants set`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_jobs: int | None = Field(default=None, ge=1)  # jobs queued or running at once
    max_queued: int | None = Field(default=None, ge=1)  # shards waiting, all its jobs
    max_in_flight: int | None = Field(default=None, ge=1)  # shards waiting or running


class TenantUsage(BaseModel):
    tenant: str
    jobs: int = 0  # queued or running
    queued: int = 0  # shards waiting in Redis
    running: int = 0  # shards a worker holds

    @property
    def in_flight(self) -> int:
        return self.queued + self.running


def checked_tenant(name: str) -> str:
    """The tenant name, or ValueError saying what one may hold."""
    if not re.fullmatch(TENANT_PATTERN, name):
        raise ValueError(
            f"tenant name {name!r}: lower-case letters, digits, '_' and '-', starting with a "
            "letter or digit, at most 32 characters"
        )
    return name


def tenant_queue(base: str, tenant: str) -> str:
    """The queue of `tenant`'s shards in the pool whose base queue is `base`."""
    return base if tenant == DEFAULT_TENANT else f"{base}.{tenant}"
