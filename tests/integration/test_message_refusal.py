"""Messages that are not JSON, or fail schema validation, are refused and never executed."""

from __future__ import annotations

import json
import os
import uuid

from kombu import Connection, Exchange, Producer

from pipeline.broker.backlog import backlog
from pipeline.broker.redis_url import for_kombu
from pipeline.jobs.keys import DEFAULT_QUEUE, TASK_ENCODE_SHARD
from pipeline.settings import Settings
from tests.integration.conftest import corpus_records, run_cli, wait_until, write_jsonl
from workers.app import create_app


class Exploit:
    """Unpickling this would run a shell command that creates `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pickle_bad_json_and_invalid_messages_are_refused(
    tmp_path, cli_env, workers, store, redis_server
):
    [name] = workers.start(1)
    app = create_app(Settings(broker_url=redis_server.url))
    marker = tmp_path / "pwned"

    # 1. A pickle message carrying a payload that would run code when unpickled.
    app.send_task(TASK_ENCODE_SHARD, args=[Exploit(str(marker))], serializer="pickle",
                  queue=DEFAULT_QUEUE)  # fmt: skip
    # 2. JSON that fails the schema: path-like job id, negative shard, no documents.
    app.send_task(
        TASK_ENCODE_SHARD,
        args=[{"job_id": "../../etc", "shard": -1, "documents": []}],
        queue=DEFAULT_QUEUE,
    )
    # 3. Two arguments instead of one message.
    app.send_task(TASK_ENCODE_SHARD, args=[{"job_id": "abc"}, "extra"], queue=DEFAULT_QUEUE)
    # 4. A body that claims to be JSON and is not.
    with Connection(for_kombu(redis_server.url)) as connection:
        producer = Producer(connection, exchange=Exchange(DEFAULT_QUEUE, type="direct"))
        producer.publish(
            b"\x80{not json",
            routing_key=DEFAULT_QUEUE,
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": TASK_ENCODE_SHARD, "id": str(uuid.uuid4()), "lang": "py"},
            declare=[],
        )

    # A good job after them: once it completes, the worker has consumed everything before it.
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_records(5))
    submitted = run_cli("submit", str(corpus), "--out", str(tmp_path / "out"), env=cli_env)
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert run_cli("wait", job_id, "--timeout", "300", env=cli_env, timeout=320).returncode == 0

    log = workers.log(name)
    assert "Refusing to deserialize untrusted content of type pickle" in log
    assert log.count("refused shard message") == 2
    assert "invalid message" in log and "job_id" in log
    assert "Can't decode message body" in log
    assert not marker.exists()  # the pickle was never loaded
    assert backlog(store.redis, DEFAULT_QUEUE).queued == 0  # refused, not requeued for ever
    wait_until(lambda: store.redis.hlen("unacked") == 0, 10)
    assert store.job_ids() == [job_id]  # nothing was recorded for the bad messages
    assert json.loads(run_cli("status", job_id, "--json", env=cli_env).stdout)["state"] == (
        "completed"
    )
