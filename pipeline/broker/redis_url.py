"""Broker URLs as users write them, turned into what kombu and redis-py each expect.

Unix sockets are spelt `unix:///path` by redis-py and `redis+socket:///path` by kombu;
users may write either. TCP URLs (`redis://`, `rediss://`, passwords in the URL) pass
through unchanged. redis-py reads a `rediss://` URL's TLS query options itself; kombu
ignores them (and would fall back to an unverified connection), so `tls_options` hands
them to Celery as `broker_use_ssl`.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import redis

from pipeline.errors import BrokerUrlError

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
# How long a connected client keeps retrying while Redis is unreachable (a restart, a
# failover): long enough to ride out a restart, short enough to report a real outage.
DEFAULT_RETRY_SECONDS = 60.0
_BACKOFF_BASE, _BACKOFF_CAP = 0.1, 2.0
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


_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
}
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def tls_options(url: str) -> dict[str, Any] | None:
    """The TLS options of a `rediss://` URL in the form Celery's `broker_use_ssl` takes.

    None for other schemes. Certificates are verified unless the URL says
    `ssl_cert_reqs=none`: secure by default, as redis-py is for the same URL.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    query = dict(parse_qsl(parts.query))
    reqs = query.get("ssl_cert_reqs", "required")
    if reqs.lower() not in _CERT_REQS:
        raise BrokerUrlError(
            f"ssl_cert_reqs={reqs!r} in the broker URL: use required, optional or none"
        )
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[reqs.lower()]}
    options.update({key: query[key] for key in _TLS_FILES if key in query})
    if "ssl_check_hostname" in query:
        options["ssl_check_hostname"] = query["ssl_check_hostname"].lower() in ("1", "true", "yes")
    return options


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def retries_within(seconds: float, base: float = _BACKOFF_BASE, cap: float = _BACKOFF_CAP) -> int:
    """Retries whose exponential backoff (base * 2**n, capped) adds up to `seconds`."""
    total, retries = 0.0, 0
    while total < seconds:
        retries += 1
        total += min(cap, base * 2**retries)
    return retries


def publish_retry_policy(seconds: float = DEFAULT_RETRY_SECONDS) -> dict[str, float]:
    """kombu's retry policy for sending a task, riding out the same outage as `connect`."""
    return {
        "max_retries": retries_within(seconds),
        "interval_start": _BACKOFF_BASE,
        "interval_step": 0.5,
        "interval_max": _BACKOFF_CAP,
    }


def connect(url: str, retry_seconds: float = DEFAULT_RETRY_SECONDS) -> redis.Redis:
    """A redis-py client: fails fast if Redis is not there now, then rides out outages.

    The first ping retries briefly, so a wrong URL is reported at once. After that every
    command retries for up to `retry_seconds` while the connection is down, so a Redis
    restart pauses producers, workers and `m3pipe wait` instead of failing them.
    """
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    def retry(retries: int) -> Retry:
        return Retry(ExponentialBackoff(cap=_BACKOFF_CAP, base=_BACKOFF_BASE), retries=retries)

    client = redis.Redis.from_url(
        for_redis_py(url),
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=10,
        retry=retry(3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
    client.ping()
    client.set_retry(retry(retries_within(retry_seconds)))
    return client
