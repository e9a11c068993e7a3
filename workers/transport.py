"""kombu's Redis transport, hardened against what anyone with Redis access can push.

kombu decodes each queue entry in the worker's main process; an entry that is not JSON
(`redis-cli lpush m3pipe garbage`) raised out of the event loop and stopped the worker
("Unrecoverable error: JSONDecodeError"). Here an entry is checked first: one larger than
`max_message_bytes` is dropped before it is decoded, and one that is not a kombu message
is dropped after; both are logged with what is known of them, and the worker goes on.
The transport replaces kombu's for the redis://, rediss:// and socket schemes.
"""

from __future__ import annotations

import logging
import re
from queue import Empty
from typing import Any

from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# kombu writes a message's properties last; its task id is there.
_TASK_ID = re.compile(rb'"correlation_id":\s*"([^"]{1,200})"')


def describe(item: bytes) -> str:
    """What a log line can say of a raw entry without decoding it: size and task id."""
    found = _TASK_ID.search(item[-4096:])
    task = found.group(1).decode("ascii", "replace") if found else "unknown"
    return f"{len(item):,} bytes, task id {task}"


def decode_entry(item: bytes, max_bytes: int) -> dict[str, Any] | None:
    """The kombu message in a queue entry, or None (logged) when it must be dropped."""
    if len(item) > max_bytes:
        log.error(
            "dropped a queue entry larger than M3PIPE_MAX_MESSAGE_BYTES (%s > %s bytes)",
            describe(item),
            f"{max_bytes:,}",
        )
        return None
    try:
        message = loads(bytes_to_str(item))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        log.error("dropped a queue entry that is not JSON (%s): %s", describe(item), exc)
        return None
    properties = message.get("properties") if isinstance(message, dict) else None
    if not (
        isinstance(properties, dict)
        and isinstance(properties.get("delivery_info"), dict)
        and "delivery_tag" in properties
        and isinstance(message.get("headers", {}), dict)
    ):
        log.error("dropped a queue entry that is not a kombu message (%s)", describe(item))
        return None
    return message


class Channel(kombu_redis.Channel):
    max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
    from_transport_options = (  # type: ignore[assignment]  # one option more
        *kombu_redis.Channel.from_transport_options,
        "max_message_bytes",
    )

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7's _brpop_read, with the entry checked before it is decoded.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            message = decode_entry(item, self.max_message_bytes)
            if message is None:
                raise Empty()
            self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            self._flush_brpop_reauth()

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    message = decode_entry(item, self.max_message_bytes)
                    if message is not None:
                        return message
            self._maybe_update_queues_expire(client, queue)
            raise Empty()


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    """Use this transport for every Redis URL of this process (producers included)."""
    name = f"{__name__}:Transport"
    aliases = kombu_transports.TRANSPORT_ALIASES
    for scheme, target in list(aliases.items()):
        if target == "kombu.transport.redis:Transport":
            aliases[scheme] = name
