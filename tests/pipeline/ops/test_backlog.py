"""Backlog against a real Redis: every priority list of a queue plus its unacked messages."""

from __future__ import annotations

import json

import pytest

from pipeline.broker.backlog import backlog, backlogs, priority_lists
from pipeline.ops.autoscaler import parse_devices


def test_backlog_counts_priority_lists_and_unacked_per_queue(store):
    client = store.redis
    a, a_high, a_low = priority_lists("a")[0], priority_lists("a")[3], priority_lists("a")[1]
    assert (a_low, a_high) == ("a\x06\x163", "a\x06\x169")
    client.rpush(a, "m1", "m2")
    client.rpush(a_high, "m3")
    client.rpush(a_low, "m4")
    client.rpush("b", "m5")
    client.rpush("a-other", "not a")  # another queue whose name starts the same
    client.hset(
        "unacked",
        mapping={
            "t1": json.dumps([{"body": "..."}, "a", "a"]),
            "t2": json.dumps([{"body": "..."}, "b", "b"]),
            "t3": json.dumps([{"body": "..."}, "b", "b"]),
            "t4": "garbage",
        },
    )
    found = backlogs(client, ["a", "b", "empty"])
    assert (found["a"].queued, found["a"].in_flight, found["a"].total) == (4, 1, 5)
    assert (found["b"].queued, found["b"].in_flight) == (1, 2)
    assert found["empty"].total == 0
    assert backlog(client, "b").total == 3


@pytest.mark.parametrize(
    ("spec", "devices"),
    [("0,1,2,3", ["0", "1", "2", "3"]), ("cpu:2", ["cpu", "cpu"]), ("cpu", ["cpu"]),
     ("1, cpu:1", ["1", "cpu"])],
)  # fmt: skip
def test_parse_devices(spec, devices):
    assert parse_devices(spec) == devices


@pytest.mark.parametrize("spec", ["gpu0", "cpu:0", "0,0", "", "cpu:x"])
def test_parse_devices_refuses(spec):
    with pytest.raises(ValueError, match="--devices"):
        parse_devices(spec)


def test_backlog_server_serves_json_for_keda(store):
    import threading
    import urllib.error
    import urllib.request

    from pipeline.ops.backlog_server import backlog_report, make_server

    store.redis.rpush("m3pipe", "a", "b")
    server = make_server("127.0.0.1", 0, lambda: backlog_report(store.redis, ["m3pipe"]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with opener.open(f"{url}/backlog", timeout=10) as response:
            report = json.loads(response.read())
        assert report == {
            "total": 2, "queues": {"m3pipe": {"queued": 2, "in_flight": 0, "total": 2}}
        }  # fmt: skip
        with pytest.raises(urllib.error.HTTPError):
            opener.open(f"{url}/other", timeout=10)
    finally:
        server.shutdown()


def test_backlog_serves_on_localhost_unless_told():
    """No auth on /backlog: it binds 127.0.0.1 unless an address is given (as flower)."""
    from pipeline.cli.main import build_parser

    assert build_parser().parse_args(["backlog", "--serve", "9391"]).address == "127.0.0.1"
