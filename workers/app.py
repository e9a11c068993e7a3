"""The Celery app: Redis broker, JSON only, late acks, one shard at a time per worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_shutting_down
from kombu.exceptions import OperationalError

from pipeline.broker.redis_url import (
    for_kombu,
    kombu_transport_options,
    publish_retry_policy,
    tls_options,
)
from pipeline.errors import BrokerFull
from pipeline.exit_codes import EXIT_INTERRUPTED
from pipeline.jobs.keys import DEFAULT_QUEUE, TASK_ENCODE_SHARD, shard_task_id
from pipeline.settings import Settings
from schemas.job import ShardMessage
from schemas.tenant import Priority
from workers.transport import install as install_transport


def celery_config(settings: Settings) -> dict[str, Any]:
    url = for_kombu(settings.broker)
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        # kombu sweeps `unacked` for messages of dead workers every interval x throttle
        # seconds (10 x 10 by default): every interval here.
        "unacked_restore_interval": settings.restore_interval,
        "unacked_restore_throttle": 1,
        "max_message_bytes": settings.max_message_bytes,  # workers/transport.py
        **kombu_transport_options(settings.broker),  # Sentinel's master_name
    }
    # kombu ignores a rediss:// URL's own TLS options: hand them over explicitly.
    tls = tls_options(settings.broker)
    tls_config = {"broker_use_ssl": tls, "redis_backend_use_ssl": tls} if tls else {}
    return {
        **tls_config,
        "broker_url": url,
        "result_backend": url,
        # JSON only: a pickle message is refused before anything is deserialised.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # A shard is acknowledged only after its file is written; a worker that dies
        # mid-shard leaves it unacknowledged and Redis redelivers it.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # On a lost broker connection (e.g. Redis restarting) the running shard finishes
        # and records itself done; if its ack is lost with the connection, the redelivery
        # after the visibility timeout is skipped as already done. Cancelling it instead
        # lost the message in a Redis restart (tests/integration/test_redis_restart.py).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # One shard at a time, none reserved ahead: an idle worker never waits behind a busy one.
        "worker_concurrency": 1,
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "result_expires": settings.result_expires,
        # Flower reads task events.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        # Job state lives in m3pipe's own keys; Celery results would only fill Redis, and a
        # producer would subscribe to each sent task's result channel.
        "task_ignore_result": True,
        # Model loading happens in worker_process_init, which Celery otherwise cuts at 4 s.
        "worker_proc_alive_timeout": settings.model_load_timeout,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_default_queue": DEFAULT_QUEUE,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }


def create_app(settings: Settings | None = None) -> Celery:
    install_transport()
    app = Celery("m3pipe")
    app.conf.update(celery_config(settings or Settings()))
    app.conf.include = ["workers.tasks"]
    return app


def run_worker(name: str, queues: list[str], slots: int) -> int:
    """This process as the Celery worker `celery worker --hostname NAME --queues ...
    --concurrency SLOTS --pool prefork --task-events --loglevel INFO --without-gossip
    --without-mingle` would make it, through Celery's worker class; returns once it has shut
    down, with its exit status: 0 after a warm shutdown (SIGTERM), 130 after Ctrl-C (m3pipe's
    status for it; Celery's command says 1), else what Celery's command would exit with (1
    after an unrecoverable error). Not through Celery's command line: importing it (click,
    its shell, every subcommand and plugin) took 0.2-0.4 s of each worker's start. Mingle
    asks the other workers for their revoked tasks and waits a second for answers at every
    start; m3pipe cancels in its own Redis keys and never revokes a shard task."""
    signals: list[str] = []  # the shutdown signals Celery handled, in order

    def heard(sig: str = "", **_: Any) -> None:
        signals.append(sig)

    worker_shutting_down.connect(heard, weak=False)
    worker = app.Worker(
        hostname=name,
        queues=queues,
        concurrency=slots,
        pool_cls="prefork",
        loglevel="INFO",
        task_events=True,
        without_gossip=True,
        without_mingle=True,
    )
    try:
        worker.start()
    finally:
        worker_shutting_down.disconnect(heard)
    return worker_exit_code(worker.exitcode, signals)


def worker_exit_code(exitcode: object, signals: list[str]) -> int:
    """Celery's `WorkController.exitcode` (None after a warm shutdown; `SystemExit`'s code,
    which may be anything) as this process's exit status, given the shutdown `signals`."""
    if "SIGINT" in signals:
        return EXIT_INTERRUPTED
    if exitcode is None:
        return 0
    if isinstance(exitcode, int) and 0 <= exitcode <= 255:
        return exitcode
    return 1  # a message (`sys.exit("...")`), or a status no process can have


def shard_publisher(settings: Settings) -> Callable[[ShardMessage, str, Priority], None]:
    """publish(message, queue, priority): one shard as one JSON task, named for Flower."""
    producer_app = create_app(settings)

    def publish(message: ShardMessage, queue: str, priority: Priority) -> None:
        try:
            send(message, queue, priority)
        except OperationalError as exc:
            if "maxmemory" not in str(exc) and "OOM" not in str(exc):
                raise
            raise BrokerFull(broker_full_advice(message)) from exc

    def send(message: ShardMessage, queue: str, priority: Priority) -> None:
        producer_app.send_task(
            TASK_ENCODE_SHARD,
            args=[message.wire()],
            queue=queue,
            # Always explicit: kombu files a message without a priority under the first step.
            priority=priority.broker_priority,
            task_id=shard_task_id(message.job_id, message.shard),
            argsrepr=f"job={message.job_id} shard={message.shard} "
            + f"{'pairs' if message.pairs else 'docs'}={message.size}"
            + (" (by reference)" if message.ref is not None else ""),
            kwargsrepr="{}",
            # The job's state in Redis is what is watched: no result channel per shard.
            ignore_result=True,
            retry=True,
            retry_policy=publish_retry_policy(settings.redis_retry_seconds),
        )

    return publish


def broker_full_advice(message: ShardMessage) -> str:
    """What to do when Redis refuses a message for want of memory."""
    inline = message.ref is None
    return (
        "Redis is out of memory (maxmemory reached, policy noeviction): it refused shard "
        f"{message.shard} of job {message.job_id}. "
        + (
            "Send shards by reference (without --inline-shards: a few hundred bytes each), "
            if inline
            else ""
        )
        + "lower --max-queued, or give Redis more memory (maxmemory); then submit again "
        "with --resume"
    )


def live_workers(settings: Settings, timeout: float) -> list[str]:
    """The names of the workers whose main process answers a control ping in `timeout`."""
    replies = create_app(settings).control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


def ping_problem(name: str, timeout: float) -> str | None:
    """Why worker `name`'s main process does not answer a control ping, or None."""
    replies = app.control.ping(destination=[name], timeout=timeout)
    if not any(name in reply for reply in replies):
        return f"worker {name} did not answer a control ping within {timeout:.0f}s"
    return None


app = create_app()
