"""`m3pipe backlog --serve PORT`: the backlog as JSON over HTTP, for KEDA's metrics-api scaler.

GET /backlog -> {"total": N, "queues": {"m3pipe": {"queued": q, "in_flight": f, "total": t}}}
KEDA reads `total` (valueLocation) and scales the worker Deployment on it, so in-flight
shards count, which a plain Redis list-length trigger cannot see.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis

from pipeline.broker.backlog import backlogs


def backlog_report(client: redis.Redis, queues: list[str]) -> dict[str, Any]:
    found = backlogs(client, queues)
    return {
        "total": sum(b.total for b in found.values()),
        "queues": {
            queue: {"queued": b.queued, "in_flight": b.in_flight, "total": b.total}
            for queue, b in found.items()
        },
    }


def make_server(
    address: str, port: int, report: Callable[[], dict[str, Any]]
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/backlog", "/healthz"):
                self.send_error(404)
                return
            try:
                body = json.dumps(report()).encode()
                code = 200
            except redis.RedisError as exc:
                body, code = json.dumps({"error": str(exc)}).encode(), 503
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one request every few seconds from KEDA: not worth a log line

    return ThreadingHTTPServer((address, port), Handler)
