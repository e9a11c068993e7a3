"""Broker URLs as users write them, turned into what kombu and redis-py each expect.

Unix sockets are spelt `unix:///path` by redis-py and `redis+socket:///path` by kombu;
users may write either. TCP URLs (`redis://`, `rediss://` with their query options such
as `ssl_cert_reqs`, and passwords in the URL) pass through unchanged.
"""

from __future__ import annotations

import redis

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
_SOCKET_SCHEMES = ("unix://", "redis+socket://")


def for_kombu(url: str) -> str:
    for scheme in _SOCKET_SCHEMES:
        if url.startswith(scheme):
            return "redis+socket://" + url.removeprefix(scheme)
    return url


def for_redis_py(url: str) -> str:
    for scheme in _SOCKET_SCHEMES:
        if url.startswith(scheme):
            return "unix://" + url.removeprefix(scheme)
    return url


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def connect(url: str) -> redis.Redis:
    """A redis-py client that retries briefly on connection errors."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        for_redis_py(url),
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=10,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
