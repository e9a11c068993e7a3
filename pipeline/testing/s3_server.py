"""A local S3-compatible server (moto in server mode) for object-storage tests.

The server is a separate process speaking real S3 over HTTP, so m3pipe's pyarrow
S3 client, its workers and its producer all talk to it as they would to AWS.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs

START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    """`python -m moto.server` on a free local port; buckets are made per test."""

    def __init__(self, log_path: Path) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start listening")

    def env(self) -> dict[str, str]:
        """What a client process needs: throwaway keys and this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",  # never probe for an instance role
        }

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            endpoint_override=self.endpoint,
            allow_bucket_creation=True,
        )

    def new_bucket(self) -> str:
        name = f"m3t-{uuid.uuid4().hex[:12]}"
        self.filesystem().create_dir(name)
        return name

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class Bucket:
    """One test's bucket: URLs for m3pipe, and direct reads and writes for checks."""

    def __init__(self, server: S3Server) -> None:
        self.server = server
        self.name = server.new_bucket()
        self.fs = server.filesystem()

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes) -> str:
        with self.fs.open_output_stream(f"{self.name}/{key}") as stream:
            stream.write(data)
        return self.url(key)

    def get(self, key: str) -> bytes:
        with self.fs.open_input_stream(f"{self.name}/{key}") as stream:
            return stream.read()

    def keys(self, prefix: str) -> list[str]:
        """Every object key under `prefix/`, relative to it, sorted."""
        selector = pafs.FileSelector(f"{self.name}/{prefix}", recursive=True, allow_not_found=True)
        base = f"{self.name}/{prefix}/"
        return sorted(
            info.path.removeprefix(base)
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        )
