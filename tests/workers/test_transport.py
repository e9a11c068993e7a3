"""The hardened Redis transport: what is dropped before or after decoding, and why."""

from __future__ import annotations

import json
import logging

from kombu import transport as kombu_transports

from workers.app import create_app
from workers.transport import decode_entry, describe


def _message(task_id: str = "job-00001") -> bytes:
    return json.dumps(
        {
            "body": "e30=",
            "headers": {"id": task_id, "task": "m3pipe.encode_shard"},
            "properties": {
                "correlation_id": task_id,
                "delivery_info": {"exchange": "", "routing_key": "m3pipe"},
                "delivery_tag": "tag-1",
            },
        }
    ).encode()


def test_a_kombu_message_passes(caplog):
    assert decode_entry(_message(), 1 << 20)["headers"]["id"] == "job-00001"
    assert not caplog.records


def test_garbage_is_dropped_with_a_reason(caplog):
    caplog.set_level(logging.ERROR)
    entries = [b"garbage", b"\xff\xfe", b"[" * 100_000, b"123", b'{"properties": 1}', b"{}"]
    for entry in entries:
        assert decode_entry(entry, 1 << 20) is None
    messages = [record.getMessage() for record in caplog.records]
    assert sum("not JSON" in m for m in messages) == 3
    assert sum("not a kombu message" in m for m in messages) == 3


def test_an_oversized_entry_is_dropped_before_decoding_naming_its_task(caplog, monkeypatch):
    caplog.set_level(logging.ERROR)
    import workers.transport as transport

    def no_decoding(*_):
        raise AssertionError("decoded")

    monkeypatch.setattr(transport, "loads", no_decoding)
    assert decode_entry(_message("big-00007") + b" " * 2048, 1024) is None
    assert "larger than M3PIPE_MAX_MESSAGE_BYTES" in caplog.text
    assert "task id big-00007" in caplog.text
    assert describe(b"x" * 10) == "10 bytes, task id unknown"


def test_the_app_uses_the_transport_with_the_settings():
    app = create_app()
    options = app.conf.broker_transport_options
    assert options["unacked_restore_throttle"] == 1
    assert options["unacked_restore_interval"] == 10.0
    assert kombu_transports.TRANSPORT_ALIASES["redis"] == "workers.transport:Transport"
    with app.connection_for_read() as connection:
        assert type(connection.transport).__module__ == "workers.transport"
