"""Broker URLs: TLS options for Celery, retry budgets, failing fast when Redis is absent."""

from __future__ import annotations

import contextlib
import ssl
import time

import pytest
import redis

from pipeline.broker.redis_url import connect, publish_retry_policy, retries_within, tls_options
from pipeline.errors import BrokerUrlError


def test_tls_options_come_from_a_rediss_url_and_verify_by_default():
    assert tls_options("redis://localhost:6379/0") is None
    assert tls_options("unix:///tmp/r.sock") is None
    assert tls_options("rediss://:pw@h:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    url = (
        "rediss://h:6380/0?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem"
        "&ssl_keyfile=/k.pem&ssl_check_hostname=false"
    )
    assert tls_options(url) == {
        "ssl_cert_reqs": ssl.CERT_NONE,
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k.pem",
        "ssl_check_hostname": False,
    }
    with pytest.raises(BrokerUrlError, match="use required, optional or none"):
        tls_options("rediss://h/0?ssl_cert_reqs=maybe")


def test_retry_budgets_add_up_to_the_outage_they_ride_out():
    assert retries_within(0) == 0
    for seconds in (5, 60, 300):
        retries = retries_within(seconds)
        waits = [min(2.0, 0.1 * 2**n) for n in range(1, retries + 1)]
        assert sum(waits) >= seconds > sum(waits[:-1])
    assert publish_retry_policy(60)["max_retries"] == retries_within(60)


def test_connect_fails_at_once_when_redis_is_not_there(tmp_path):
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        connect(f"unix://{tmp_path}/absent.sock", retry_seconds=600)
    assert time.monotonic() - started < 30  # the 600 s budget applies only once connected


def test_a_sentinel_url_names_its_sentinels_master_db_and_password():
    from pipeline.broker.redis_url import (
        SentinelTarget,
        for_kombu,
        kombu_transport_options,
        redact,
        sentinel_target,
    )

    url = "sentinel://:s%40cret@h1:26379;sentinel://h2:26380;sentinel://h3/2?master_name=mymaster"
    assert sentinel_target(url) == SentinelTarget(
        (("h1", 26379), ("h2", 26380), ("h3", 26379)), "mymaster", 2, None, "s@cret"
    )
    # kombu's form: no query (it does not read master_name there), credentials and db first.
    assert for_kombu(url) == (
        "sentinel://:s%40cret@h1:26379/2;sentinel://h2:26380;sentinel://h3:26379"
    )
    assert kombu_transport_options(url) == {"master_name": "mymaster"}
    assert kombu_transport_options("redis://h:6379/0") == {}
    assert sentinel_target("redis://h:6379/0") is None
    assert "s%40cret" not in redact(url) and "***" in redact(url)
    with pytest.raises(BrokerUrlError, match=r"needs \?master_name=NAME"):
        sentinel_target("sentinel://h1:26379")
    with pytest.raises(BrokerUrlError, match="sentinel://HOST:PORT"):
        sentinel_target("sentinel://h1:26379;redis://h2:6379?master_name=m")
    with pytest.raises(BrokerUrlError, match="not a number"):
        sentinel_target("sentinel://h1:26379/zero?master_name=m")
    # Sentinels with a password of their own (their requirepass): both clients get it.
    guarded = "sentinel://:pw@h1;sentinel://h2/0?master_name=m&sentinel_password=s%26ntry"
    target = sentinel_target(guarded)
    assert target is not None and target.password == "pw"
    assert target.sentinel_kwargs() == {"password": "s&ntry"}
    assert kombu_transport_options(guarded) == {
        "master_name": "m", "sentinel_kwargs": {"password": "s&ntry"}}  # fmt: skip
    assert "ntry" not in redact(guarded) and "sentinel_password=***" in redact(guarded)


def test_a_sentinel_url_with_tls_options_speaks_tls_to_the_sentinels_and_the_master():
    from pipeline.broker.redis_url import kombu_transport_options, sentinel_target

    plain = "sentinel://h1;sentinel://h2/0?master_name=m"
    assert sentinel_target(plain).tls is None and tls_options(plain) is None
    url = f"{plain}&sentinel_password=pw&ssl_ca_certs=/ca.pem&ssl_check_hostname=false"
    tls = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem",
           "ssl_check_hostname": False}  # fmt: skip
    target = sentinel_target(url)
    assert target.tls == tls and tls_options(url) == tls  # Celery's broker_use_ssl
    assert target.sentinel_kwargs() == {"password": "pw", "ssl": True, **tls}
    assert kombu_transport_options(url)["sentinel_kwargs"] == {"password": "pw", "ssl": True, **tls}
    # ssl=true alone: verified against the system's CAs.
    assert sentinel_target(f"{plain}&ssl=true").tls == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert sentinel_target(f"{plain}&ssl=true&ssl_cert_reqs=none").master_tls() == {
        "ssl": True, "ssl_cert_reqs": ssl.CERT_NONE}  # fmt: skip
    # Never silently plain: TLS options with ssl=false, or a switch that is not one.
    with pytest.raises(BrokerUrlError, match="ssl=false but gives ssl_ca_certs"):
        sentinel_target(f"{plain}&ssl=false&ssl_ca_certs=/ca.pem")
    with pytest.raises(BrokerUrlError, match="use ssl=true"):
        sentinel_target(f"{plain}&ssl=yes please")
    with pytest.raises(BrokerUrlError, match="ssl_cert_reqs='maybe'"):
        sentinel_target(f"{plain}&ssl_cert_reqs=maybe")


def test_sentinels_that_cannot_be_reached_are_named_in_one_line_at_once(tmp_path):
    """Nothing listening, or a plain client at a TLS port: BrokerUrlError at once, naming a
    sentinel and what went wrong (redis-py alone said "No master found" after ~50 s)."""
    import socket
    import threading

    from pipeline.broker.redis_url import check_sentinels, sentinel_target

    closed = socket.socket()  # a port nothing listens on
    closed.bind(("127.0.0.1", 0))
    free = closed.getsockname()[1]
    closed.close()
    hangs_up = socket.socket()  # as a TLS port does to a plain client's first word
    hangs_up.bind(("127.0.0.1", 0))
    hangs_up.listen()

    def hang_up() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = hangs_up.accept()
                conn.recv(64)
                conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(BrokerUrlError) as nothing:
        connect(f"sentinel://127.0.0.1:{free}/0?master_name=m")
    assert f"no sentinel answered: 127.0.0.1:{free}: " in str(nothing.value)
    two = sentinel_target(
        f"sentinel://127.0.0.1:{hangs_up.getsockname()[1]};sentinel://127.0.0.1:{free}"
        "/0?master_name=m"
    )
    with pytest.raises(BrokerUrlError, match=r"take &ssl=true.*\(and 1 more\)$") as plain:
        check_sentinels(two)
    assert "\n" not in str(plain.value) and len(str(plain.value)) < 500
    assert time.monotonic() - started < 15
    hangs_up.close()
