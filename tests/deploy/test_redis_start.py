"""The Redis start script of docker-compose.yml and deploy/k8s/redis.yaml, run for real: the
password reaches redis-server through a config file (quotes, backslashes, spaces and `$`
intact), never its command line, and the health check authenticates through REDISCLI_AUTH."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
import yaml

from pipeline.ops.embedded_redis import find_redis_server

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pa\"ss\\word with $HOME and 'quotes'"


def compose_script() -> tuple[str, str]:
    redis_service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]
    # Compose turns $$ into $ before the shell sees it.
    script = redis_service["command"][0].replace("$$", "$")
    health = redis_service["healthcheck"]["test"][1].replace("$$", "$")
    return script, health


def k8s_script() -> tuple[str, str]:
    statefulset = next(yaml.safe_load_all((ROOT / "deploy/k8s/redis.yaml").read_text()))
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    return container["args"][0], container["readinessProbe"]["exec"]["command"][2]


@pytest.mark.slow
@pytest.mark.parametrize("source", [compose_script, k8s_script], ids=["compose", "k8s"])
def test_the_password_travels_in_a_file_and_authenticates(source):
    script, health = source()
    directory = Path(f"/tmp/m3r-{uuid.uuid4().hex[:8]}")
    directory.mkdir()
    socket = directory / "redis.sock"
    server = find_redis_server()
    cli = str(Path(server).with_name("redis-cli"))
    if not Path(cli).exists():
        cli = shutil.which("redis-cli") or pytest.fail("no redis-cli beside redis-server")
    local = script.replace("/run/redis-auth", str(directory))
    local = local.replace("exec redis-server", f"exec {server}")
    local = local.rstrip() + f" --port 0 --unixsocket {socket} --dir {directory}\n"
    env = {**os.environ, "REDIS_PASSWORD": PASSWORD}
    process = subprocess.Popen(["sh", "-c", local], env=env)
    try:
        deadline = time.monotonic() + 15
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert socket.exists(), "redis-server did not start"
        client = redis.Redis(unix_socket_path=str(socket), password=PASSWORD)
        assert client.ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(unix_socket_path=str(socket), password="wrong").ping()
        # `ps` would show the command line: the password is not on it.
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        assert b"pass" not in cmdline and b"requirepass" not in cmdline
        assert oct((directory / "auth.conf").stat().st_mode & 0o777) == "0o600"
        probe = health.replace("redis-cli", f"{cli} -s {socket}")
        assert "PASSWORD" in probe and " -a " not in probe
        assert subprocess.run(["sh", "-c", probe], env=env).returncode == 0
        wrong = {**env, "REDIS_PASSWORD": "wrong"}
        assert subprocess.run(["sh", "-c", probe], env=wrong, capture_output=True).returncode
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
