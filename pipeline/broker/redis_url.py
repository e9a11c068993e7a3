"""Broker URLs as users write them, turned into what kombu and redis-py each expect.

Unix sockets are spelt `unix:///path` by redis-py and `redis+socket:///path` by kombu;
users may write either. TCP URLs (`redis://`, `rediss://`, passwords in the URL) pass
through unchanged. redis-py reads a `rediss://` URL's TLS query options itself; kombu
ignores them (and would fall back to an unverified connection), so `tls_options` hands
them to Celery as `broker_use_ssl`.

Redis Sentinel: `sentinel://[[USER]:PASSWORD@]HOST:PORT[;sentinel://HOST:PORT...][/DB]
?master_name=NAME[&sentinel_password=PW[&sentinel_username=USER]][&ssl=true&ssl_...]`,
kombu's `;` form for several sentinels; the password before the host is the master's,
`sentinel_password` the sentinels' own (their `requirepass`). `ssl=true` (or any `ssl_*`
option, as a `rediss://` URL takes them) speaks TLS to the sentinels and to the master alike.
Job state goes through redis-py's Sentinel client (`master_for`), the queue through kombu's
Sentinel transport, given `master_name` as a transport option (`kombu_transport_options`),
since kombu does not read it from the URL. Both find the new master after a failover.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis

from pipeline.errors import BrokerUrlError

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
# How long a connected client keeps retrying while Redis is unreachable (a restart, a
# failover): long enough to ride out a restart, short enough to report a real outage.
DEFAULT_RETRY_SECONDS = 60.0
_BACKOFF_BASE, _BACKOFF_CAP = 0.1, 2.0
_SOCKET_SCHEMES = ("unix://", "redis+socket://")


SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelTarget:
    """What a `sentinel://` URL names: the sentinels, the master they watch, the database
    and the master's credentials."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    # The sentinels' own credentials (their `requirepass`), when they have any.
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    # redis-py's TLS options (`tls_from_query`), for the sentinels and the master; None: no TLS.
    tls: dict[str, Any] | None = None

    def sentinel_kwargs(self) -> dict[str, Any]:
        """What a client passes to the sentinels themselves (credentials, TLS)."""
        kwargs: dict[str, Any] = {}
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        if self.sentinel_username is not None:
            kwargs["username"] = self.sentinel_username
        return {**kwargs, **self.master_tls()}

    def master_tls(self) -> dict[str, Any]:
        """What a client passes for TLS to a server (master or sentinel): nothing without it."""
        return {"ssl": True, **self.tls} if self.tls is not None else {}


def sentinel_target(url: str) -> SentinelTarget | None:
    """The Sentinel setup a `sentinel://` URL names; None for any other URL."""
    if not url.startswith(f"{SENTINEL_SCHEME}://"):
        return None
    sentinels: list[tuple[str, int]] = []
    username = password = None
    db = 0
    query: dict[str, str] = {}
    for part in url.split(";"):
        try:
            parts = urlsplit(part.strip())
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError as exc:
            raise BrokerUrlError(f"bad sentinel address in the broker URL: {exc}") from None
        if parts.scheme != SENTINEL_SCHEME or not parts.hostname:
            raise BrokerUrlError(
                "a Sentinel broker URL lists sentinels as sentinel://HOST:PORT, separated by "
                f"';' (got {redact(part)!r})"
            )
        sentinels.append((parts.hostname, port))
        if parts.password is not None:
            password = unquote(parts.password)
            username = unquote(parts.username) if parts.username else None
        if parts.path.strip("/"):
            if not parts.path.strip("/").isdigit():
                raise BrokerUrlError(
                    f"the database in the broker URL is not a number: {parts.path}"
                )
            db = int(parts.path.strip("/"))
        query.update(parse_qsl(parts.query))
    master = query.get("master_name", "")
    if not master:
        raise BrokerUrlError(
            "a sentinel:// broker URL needs ?master_name=NAME (the master the sentinels "
            "monitor), e.g. sentinel://host1:26379;sentinel://host2:26379/0?master_name=mymaster"
        )
    return SentinelTarget(
        tuple(sentinels),
        master,
        db,
        username,
        password,
        query.get("sentinel_username"),
        query.get("sentinel_password"),
        _sentinel_tls(query),
    )


def _sentinel_tls(query: dict[str, str]) -> dict[str, Any] | None:
    """A sentinel URL's TLS: on with `ssl=true` or any `ssl_*` option, never silently off."""
    given = [key for key in query if key.startswith("ssl_")]
    switch = query.get("ssl", "").lower()
    if switch not in ("", "true", "false"):
        raise BrokerUrlError(f"ssl={query['ssl']!r} in the broker URL: use ssl=true")
    if switch == "false" and given:
        raise BrokerUrlError(f"the broker URL says ssl=false but gives {', '.join(given)}")
    if switch == "true" or given:
        return tls_from_query(query)
    return None


def kombu_transport_options(url: str) -> dict[str, Any]:
    """Transport options kombu needs for this URL beyond the URL itself (Sentinel's master,
    and the sentinels' own credentials and TLS; the master's TLS is `tls_options`)."""
    target = sentinel_target(url)
    if target is None:
        return {}
    options: dict[str, Any] = {"master_name": target.master_name}
    if target.sentinel_kwargs():
        options["sentinel_kwargs"] = target.sentinel_kwargs()
    return options


def for_kombu(url: str) -> str:
    target = sentinel_target(url)
    if target is not None:  # kombu's form: no query, the credentials and db on the first
        auth = ""
        if target.password is not None:
            user = quote(target.username or "", safe="")
            auth = f"{user}:{quote(target.password, safe='')}@"
        first, *others = (f"{host}:{port}" for host, port in target.sentinels)
        return ";".join(
            [f"{SENTINEL_SCHEME}://{auth}{first}/{target.db}"]
            + [f"{SENTINEL_SCHEME}://{address}" for address in others]
        )
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
    """The TLS options of a `rediss://` URL, or of a `sentinel://` one with TLS, in the form
    Celery's `broker_use_ssl` takes. None without TLS."""
    target = sentinel_target(url)
    if target is not None:
        return target.tls
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    return tls_from_query(dict(parse_qsl(parts.query)))


def tls_from_query(query: dict[str, str]) -> dict[str, Any]:
    """redis-py's TLS keyword arguments from a URL's query. Certificates are verified unless
    the URL says `ssl_cert_reqs=none`: secure by default, as redis-py is for `rediss://`."""
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
    """The URL with any password replaced, for logs and messages (each part of a `;` list)."""
    if ";" in url:
        return ";".join(redact(part) for part in url.split(";"))
    url = re.sub(r"(sentinel_password=)[^&;]*", r"\1***", url)
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


def check_sentinels(target: SentinelTarget) -> None:
    """BrokerUrlError at once, in one line, if no sentinel answers: each refused the
    credentials given for them, or none could be reached (TLS refused, nothing listening).
    redis-py alone would ask each again and again, ~50 s, and end with "No master found"."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    refused, failures = 0, []
    for host, port in target.sentinels:
        probe = redis.Redis(
            host=host,
            port=port,
            socket_connect_timeout=2,
            socket_timeout=2,
            retry=Retry(NoBackoff(), 0),
            **target.sentinel_kwargs(),
        )
        try:
            probe.ping()
            return
        except redis.AuthenticationError:
            refused += 1
        except redis.RedisError as exc:
            failures.append(f"{host}:{port}: {' '.join(str(exc).split())[:200]}")
        finally:
            probe.close()
    if refused:
        given = "the password given" if target.sentinel_password else "no password"
        raise BrokerUrlError(
            f"the sentinels refused {given} (AuthenticationError): sentinels with a "
            "password of their own take it in the URL as &sentinel_password=PW (and "
            "&sentinel_username=USER for an ACL user) after master_name"
        )
    # A plain client to a TLS port sees the connection closed (or reset) at its first word.
    tls_like = any(word in f for f in failures for word in ("closed", "reset", "SSL"))
    hint = (
        " (sentinels that speak TLS take &ssl=true, and &ssl_ca_certs=PATH for a private CA, "
        "in the URL)"
        if target.tls is None and tls_like
        else ""
    )
    raise BrokerUrlError(
        f"no sentinel answered{hint}: {failures[0]}"
        + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else "")
    )


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

    options: dict[str, Any] = {
        "decode_responses": True,
        "health_check_interval": 30,
        "socket_connect_timeout": 10,
        "retry": retry(3),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
    }
    target = sentinel_target(url)
    if target is not None:
        from redis.sentinel import Sentinel

        check_sentinels(target)
        sentinel = Sentinel(
            list(target.sentinels),
            sentinel_kwargs={"socket_connect_timeout": 10, **target.sentinel_kwargs()},
        )
        client: redis.Redis = sentinel.master_for(
            target.master_name,
            db=target.db,
            username=target.username,
            password=target.password,
            **target.master_tls(),
            **options,
        )
    else:
        client = redis.Redis.from_url(for_redis_py(url), **options)
    client.ping()
    client.set_retry(retry(retries_within(retry_seconds)))
    return client
