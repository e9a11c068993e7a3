"""What m3pipe needs of the Redis it is given, checked before any work is queued or taken:
a server that never evicts keys, and not a Redis Cluster.

An evicting Redis (`maxmemory-policy allkeys-lru`, a common managed default) drops queued
shard messages, the job's shard states and its indexes under memory pressure, silently:
jobs then hang or report "no jobs". A cluster redirects keys to other nodes; kombu has no
cluster transport and the job-state scripts use keys of one job in several slots, so m3pipe
refuses it with one sentence instead of failing on the first MOVED reply.
"""

from __future__ import annotations

import logging

import redis
from redis.exceptions import NoPermissionError, ResponseError

from pipeline.errors import RedisUnsuitable

log = logging.getLogger(__name__)

ALLOW_EVICTION_ENV = "M3PIPE_ALLOW_EVICTION"
_warned_unreadable = False


def check_redis(client: redis.Redis, allow_eviction: bool = False) -> None:
    """Raise RedisUnsuitable for a cluster, or for an evicting server unless
    `allow_eviction` (then a warning is logged). Where INFO is forbidden (an ACL user
    without @dangerous, a renamed command) this cannot be read: warned once, not refused."""
    global _warned_unreadable
    try:
        memory = client.info("memory")
        cluster = client.info("cluster")
    except (NoPermissionError, ResponseError) as exc:
        if not _warned_unreadable:
            _warned_unreadable = True
            log.warning(
                "cannot read Redis's maxmemory-policy (INFO refused: %s): make sure it is "
                "noeviction, or an evicting Redis loses queued shards and job state",
                exc,
            )
        return
    if str(cluster.get("cluster_enabled", 0)) == "1":
        raise RedisUnsuitable(
            "the broker is a Redis Cluster, which m3pipe does not support (its queue and "
            "job-state scripts need one Redis primary; use replicas with Sentinel for "
            "failover): point M3PIPE_BROKER_URL at a Redis that is not a cluster"
        )
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy == "noeviction":
        return
    if allow_eviction:
        log.warning(
            "Redis's maxmemory-policy is %s, not noeviction; running anyway because %s is "
            "set: keys evicted under memory pressure lose queued shards and job state",
            policy,
            ALLOW_EVICTION_ENV,
        )
        return
    raise RedisUnsuitable(
        f"Redis may evict keys (maxmemory-policy {policy}), which loses queued shards and "
        "job state under memory pressure: set maxmemory-policy noeviction (CONFIG SET "
        "maxmemory-policy noeviction, or the managed service's parameter), or set "
        f"{ALLOW_EVICTION_ENV}=1 to run anyway"
    )
