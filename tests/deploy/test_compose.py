"""docker-compose.yml: valid against the Compose specification's JSON schema, and every
m3pipe command in it parses with the real CLI. No Docker engine runs here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_WHEEL = ROOT / ".ci" / "cache" / "docker_compose-1.29.2-py2.py3-none-any.whl"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_schema() -> dict:
    if not SCHEMA_WHEEL.is_file():  # a fresh clone: fetch it once (a pip download, cached)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        subprocess.run(["bash", str(ROOT / ".ci" / "fetch-compose-schema")], env=env, check=True)
    with zipfile.ZipFile(SCHEMA_WHEEL) as wheel:
        return json.loads(wheel.read("compose/config/compose_spec.json"))


def test_compose_file_is_valid_against_the_compose_spec(compose):
    schema = compose_schema()
    jsonschema.Draft201909Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft201909Validator(schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # The check has teeth: a misspelt key is caught.
    broken = {**compose, "services": {"w": {"image": "x", "comand": ["m3pipe"]}}}
    assert list(jsonschema.Draft201909Validator(schema).iter_errors(broken))


def test_every_m3pipe_command_parses_with_the_cli(compose):
    parser = build_parser()
    commands = {
        name: service["command"] for name, service in compose["services"].items() if name != "redis"
    }
    assert set(commands) >= {"flower", "worker-gpu0", "worker-gpu1", "worker-cpu",
                             "autoscaler", "producer"}  # fmt: skip
    for name, command in commands.items():
        assert command[0] == "m3pipe", name
        args = parser.parse_args(command[1:])  # exits (SystemExit) on an unknown flag
        assert callable(args.func), name


def test_services_carry_the_documented_settings(compose):
    services = compose["services"]
    redis_command = " ".join(services["redis"]["command"])
    for setting in ("--appendonly yes", "--maxmemory-policy noeviction", "requirepass"):
        assert setting in redis_command
    # The password is never on a command line: a config file on a tmpfs, REDISCLI_AUTH.
    assert "--requirepass" not in redis_command and "REDIS_PASSWORD" in redis_command
    assert "/run/redis-auth" in services["redis"]["tmpfs"][0]
    health = " ".join(services["redis"]["healthcheck"]["test"])
    assert "REDISCLI_AUTH" in health and " -a " not in health
    for index in (0, 1):
        worker = services[f"worker-gpu{index}"]
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["device_ids"] == [str(index)]
        assert devices[0]["capabilities"] == ["gpu"]
        assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
        assert worker["stop_grace_period"] == "35m"  # longer than a shard may take
        assert "redis://:${REDIS_PASSWORD" in worker["environment"]["M3PIPE_BROKER_URL"]
        # confined to the data volume the compose file mounts at /data
        assert worker["environment"]["M3PIPE_OUTPUT_ROOTS"] == "${M3PIPE_OUTPUT_ROOTS:-/data}"
        assert worker["environment"]["M3PIPE_INPUT_ROOTS"] == "${M3PIPE_INPUT_ROOTS:-/data}"
        assert worker["environment"]["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
        assert "./data:/data" in worker["volumes"]
    for name in ("worker-gpu0", "worker-gpu1", "worker-cpu"):
        worker = services[name]
        assert worker["environment"]["HF_HUB_OFFLINE"] == "1"  # models from the cache volume
        assert worker["depends_on"]["fetch-model"] == {
            "condition": "service_completed_successfully"
        }
        assert "model-cache:/cache" in worker["volumes"]
    fetch = services["fetch-model"]
    assert fetch["command"][:2] == ["m3pipe", "fetch-model"] and fetch["restart"] == "no"
    assert "model-cache:/cache" in fetch["volumes"]
    assert "HF_HUB_OFFLINE" not in fetch["environment"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert services["autoscaler"]["profiles"] == ["autoscale"]
    # Each way of running workers is its own profile: `--profile autoscale up` starts the
    # autoscaler's workers only, never a fixed worker beside them on the same GPU.
    for index in (0, 1):
        assert services[f"worker-gpu{index}"]["profiles"] == ["gpu"]
    unprofiled = {name for name, service in services.items() if "profiles" not in service}
    assert unprofiled == {"redis", "flower", "fetch-model"}
    assert "M3PIPE_FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    for service in services.values():
        if service.get("build"):
            assert (ROOT / service["build"]["dockerfile"]).is_file()


def test_the_readme_block_sets_every_secret_compose_requires(compose):
    """docker compose refuses to start without `${NAME:?...}` variables: README.md's compose
    block must set each (issue 33, item 8)."""
    import re

    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    assert required == {"REDIS_PASSWORD", "FLOWER_AUTH"}
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "docker compose" in b)
    exported = set(re.findall(r"\b([A-Z_]+)=", block.splitlines()[0]))
    assert required <= exported
