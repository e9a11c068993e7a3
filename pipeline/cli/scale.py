"""Operating the cluster: `m3pipe autoscale` (workers follow the backlog), `m3pipe flower`."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from pipeline.cli.options import job_store, usage_error
from pipeline.cli.tenants import add_consumer_tenant_option, consumer_queues
from pipeline.exit_codes import EXIT_FAILED, EXIT_OK
from pipeline.runtime.metrics import AUTOSCALER_METRICS_PORT, WORKER_METRICS_PORT
from pipeline.settings import Settings


def add_scale_commands(sub: argparse._SubParsersAction) -> None:
    scale = sub.add_parser("autoscale", help="start and stop workers to follow the backlog")
    scale.add_argument(
        "--devices", required=True, help="GPU indices (0,1,2,3) or cpu:N for N CPU workers"
    )
    scale.add_argument("--min", type=int, default=0, help="workers kept even when idle")
    scale.add_argument("--max", type=int, help="workers at most (default: one per device)")
    scale.add_argument(
        "--shards-per-worker", type=int, default=1, help="backlog one worker absorbs (default 1)"
    )
    scale.add_argument(
        "--cooldown", type=float, default=60.0, help="seconds of low backlog before scaling down"
    )
    scale.add_argument("--queues", help="comma-separated queues (default: $M3PIPE_QUEUE)")
    add_consumer_tenant_option(scale)
    scale.add_argument("--poll", type=float, default=2.0, help="seconds between backlog reads")
    scale.add_argument("--log-dir", type=Path, help="worker logs (default: a new temp dir)")
    scale.add_argument(
        "--metrics-port", type=int, default=AUTOSCALER_METRICS_PORT,
        help=f"the autoscaler's Prometheus port, 0 for none (default {AUTOSCALER_METRICS_PORT})",
    )  # fmt: skip
    scale.add_argument(
        "--worker-metrics-port", type=int, default=WORKER_METRICS_PORT,
        help="worker on device slot i serves metrics on this + i; 0 for none "
        f"(default {WORKER_METRICS_PORT})",
    )  # fmt: skip
    scale.set_defaults(func=cmd_autoscale)

    flower = sub.add_parser("flower", help="the Flower monitoring UI with m3pipe's settings")
    flower.add_argument("--port", type=int, default=5555)
    flower.add_argument(
        "--address", default="127.0.0.1", help="bind address (default: localhost only)"
    )
    flower.add_argument(
        "--basic-auth",
        help="user:password[,user2:password2] (or $M3PIPE_FLOWER_BASIC_AUTH, kept out of ps); "
        "required for a non-local --address",
    )
    flower.set_defaults(func=cmd_flower)

    probe = sub.add_parser("probe", help="health check of one worker (exit 0 healthy, 1 not)")
    probe.add_argument("--name", help="worker name (default: $M3PIPE_WORKER_NAME)")
    probe.add_argument(
        "--max-shard-seconds",
        type=float,
        help="a shard held longer is wedged (default: $M3PIPE_VISIBILITY_TIMEOUT)",
    )
    probe.add_argument("--ping-timeout", type=float, default=10.0, help="0 skips the ping")
    probe.set_defaults(func=cmd_probe)

    backlog = sub.add_parser("backlog", help="queued + in-flight shards per queue")
    backlog.add_argument("--queues", help="comma-separated queues (default: $M3PIPE_QUEUE)")
    add_consumer_tenant_option(backlog)
    backlog.add_argument("--serve", type=int, metavar="PORT", help="serve GET /backlog as JSON")
    backlog.add_argument(
        "--address", default="127.0.0.1", help="with --serve (default: localhost only)"
    )
    backlog.set_defaults(func=cmd_backlog)


def cmd_autoscale(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.broker.redis_checks import check_redis
    from pipeline.ops.autoscaler import Autoscaler, check_devices, parse_devices
    from pipeline.ops.gpus import visible_gpu_count
    from pipeline.ops.scaling import ScaleLimits
    from pipeline.runtime.metrics import serve

    try:
        devices = parse_devices(args.devices)
        check_devices(devices, visible_gpu_count())
        maximum = len(devices) if args.max is None else args.max
        if not 1 <= maximum <= len(devices):
            raise ValueError(f"--max must be between 1 and the {len(devices)} device(s)")
        limits = ScaleLimits(
            max_workers=maximum,
            min_workers=args.min,
            shards_per_worker=args.shards_per_worker,
            cooldown_seconds=args.cooldown,
        )
        queues = consumer_queues(args.queues, args.tenants, settings, args.route_by_model)
        if args.poll <= 0:
            raise ValueError("--poll must be > 0")
        for port in (args.metrics_port, args.worker_metrics_port):
            if not 0 <= port <= 65535 - len(devices):
                raise ValueError("metrics ports must be 0-65535")
    except ValueError as exc:
        return usage_error(exc)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="m3pipe-autoscale-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    scaler_log = logging.getLogger("pipeline.ops.autoscaler")
    scaler_log.setLevel(logging.INFO)
    scaler_log.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s m3pipe autoscale: %(message)s"))
    scaler_log.addHandler(handler)

    client = job_store(settings).redis
    check_redis(client, settings.allow_eviction)  # its workers would each refuse to start
    scaler = Autoscaler(
        devices=devices[:maximum],
        limits=limits,
        queues=queues,
        client=client,
        env=dict(os.environ),
        log_dir=log_dir,
        worker_metrics_base=args.worker_metrics_port,
        min_free_bytes=settings.min_free_gpu_mib << 20,
    )
    serve(scaler.metrics.registry, args.metrics_port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(
        f"m3pipe autoscale: {len(scaler.devices)} device(s), queues {','.join(queues)}, "
        f"worker logs in {log_dir}",
        file=sys.stderr,
    )
    scaler.run(stop, args.poll)
    print(closing_words(log_dir, own=args.log_dir is None, died=scaler.restarts_needed),
          file=sys.stderr)  # fmt: skip
    return EXIT_OK


def closing_words(log_dir: Path, *, own: bool, died: int) -> str:
    """What `autoscale` says at exit about its workers' logs: a temp directory of its own is
    removed when no worker died on its own, else kept and named (as a --log-dir always is)."""
    if own and died == 0:
        shutil.rmtree(log_dir, ignore_errors=True)
        return "m3pipe autoscale: stopped; every worker ended cleanly, their logs removed"
    why = f" ({died} worker(s) died on their own)" if died else ""
    return f"m3pipe autoscale: stopped{why}; worker logs kept in {log_dir}"


def cmd_probe(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.ops.probe import worker_problem
    from workers.app import ping_problem
    from workers.bootstrap import WORKER_NAME_ENV

    name = args.name or os.environ.get(WORKER_NAME_ENV)
    if not name:
        return usage_error(f"--name (or ${WORKER_NAME_ENV}) is required")
    limit = args.max_shard_seconds or float(settings.visibility_timeout)
    problem = worker_problem(job_store(settings), name, limit)
    if problem is None and args.ping_timeout > 0:
        problem = ping_problem(name, args.ping_timeout)
    if problem is not None:
        print(f"m3pipe probe: {problem}", file=sys.stderr)
        return EXIT_FAILED
    print(f"m3pipe probe: {name} healthy", file=sys.stderr)
    return EXIT_OK


def cmd_backlog(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from pipeline.ops.backlog_server import backlog_report, make_server

    try:
        queues = consumer_queues(args.queues, args.tenants, settings, args.route_by_model)
        if args.serve is not None and not 0 < args.serve < 65536:
            raise ValueError("--serve takes a port, 1-65535")
    except ValueError as exc:
        return usage_error(exc)
    client = job_store(settings).redis

    def report() -> dict:
        return backlog_report(client, queues)

    if args.serve is None:
        print(json.dumps(report(), indent=2))
        return EXIT_OK
    try:
        server = make_server(args.address, args.serve, report)
    except OSError as exc:
        print(f"m3pipe backlog: cannot listen on {args.address}:{args.serve}: {exc}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    print(f"m3pipe backlog: http://{args.address}:{args.serve}/backlog", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    return EXIT_OK


LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "::1")


def is_local_address(address: str) -> bool:
    return address in LOCAL_ADDRESSES or address.startswith("127.")


def check_basic_auth(value: str) -> str:
    pairs = [pair for pair in value.split(",") if pair]
    if not pairs or any(":" not in pair or pair.startswith(":") or pair.endswith(":")
                        for pair in pairs):  # fmt: skip
        raise ValueError("--basic-auth takes user:password pairs, comma-separated")
    return ",".join(pairs)


def cmd_flower(args: argparse.Namespace, settings: Settings) -> int:
    auth = args.basic_auth or os.environ.get("M3PIPE_FLOWER_BASIC_AUTH")
    try:
        if auth:
            auth = check_basic_auth(auth)
        elif not is_local_address(args.address):
            raise ValueError(
                f"--address {args.address} would open Flower (which can revoke tasks and stop "
                "workers) to the network without a password: pass --basic-auth user:password"
            )
        if not 0 < args.port < 65536:
            raise ValueError("--port must be 1-65535")
    except ValueError as exc:
        return usage_error(exc)
    if auth:
        os.environ["FLOWER_BASIC_AUTH"] = auth  # not on the command line, where ps shows it
    from workers.app import app  # the workers' own settings: broker, visibility timeout, keys

    print(f"m3pipe flower: http://{args.address}:{args.port}/", file=sys.stderr)
    app.start(["flower", f"--port={args.port}", f"--address={args.address}"])
    return EXIT_OK
