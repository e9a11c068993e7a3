"""Real services for integration tests: a redis-server and `m3pipe worker` processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.jobs.keys import worker_key
from pipeline.jobs.store import JobStore
from pipeline.ops.embedded_redis import EmbeddedRedis
from pipeline.ops.lifeline import dies_with_parent
from pipeline.ops.process_group import stop_process_groups

# Kept when a test clears the M3PIPE_* settings for the processes it starts: the suite
# computes in fp32, the exact mode (tests/conftest.py), which what it compares needs.
PRECISION_ENV = "M3PIPE_PRECISION"

WORKER_READY_TIMEOUT = 180.0
WORKER_COMMAND = (sys.executable, "-m", "pipeline.cli", "worker", "--device", "cpu")


def run_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_model_built(model_cache: Path) -> str:
    """Build random:tiny once, before any worker starts."""
    from pipeline.engine.random_model import cached_random_model

    cached_random_model("tiny", model_cache)
    return "random:tiny"


@pytest.fixture(scope="session")
def stub_built(model_cache: Path) -> str:
    """Build stub:tiny's tokenizer once, before any worker starts."""
    from pipeline.engine.stub_model import cached_stub_dir

    cached_stub_dir("tiny", model_cache)
    return "stub:tiny"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers the tests start)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def slow_stub(env: dict[str, str], stub_built: str, tokens_per_second: int) -> None:
    """Workers started with `env` use the stand-in encoder at `tokens_per_second`: a shard
    lasts as long as the rate says while the CPU sleeps. For tests that need shards still
    running when they act (kills, failovers, scaling) and read no vector: the machine's two
    cores stay free for the rest of the suite, and the timing does not depend on its load."""
    env.update(M3PIPE_MODEL=stub_built, M3PIPE_STUB_TOKENS_PER_SECOND=str(tokens_per_second))


@pytest.fixture
def cli_env(redis_server: EmbeddedRedis, tiny_model_built: str, model_cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("M3PIPE_") or k == PRECISION_ENV}
    env.update(
        M3PIPE_BROKER_URL=redis_server.url,
        M3PIPE_MODEL=tiny_model_built,
        M3PIPE_CACHE_DIR=str(model_cache),
        M3PIPE_POLL_SECONDS="0.1",
        M3PIPE_METRICS_PORT="0",  # several workers per test: no port clashes
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


class Workers:
    """`m3pipe worker --device cpu` processes with their logs; stopped at teardown."""

    def __init__(self, env: dict[str, str], log_dir: Path, store: JobStore) -> None:
        self.env, self.log_dir, self.store = env, log_dir, store
        self.processes: dict[str, subprocess.Popen] = {}

    def start(
        self,
        count: int = 1,
        queue: str | None = "m3pipe",
        wait: bool = True,
        tenants: str | None = None,
        env: dict[str, str] | None = None,
        command: tuple[str, ...] = WORKER_COMMAND,
    ) -> list[str]:
        names = []
        for _ in range(count):
            name = f"cpu{len(self.processes)}-{uuid.uuid4().hex[:4]}@{socket.gethostname()}"
            log = open(self.log_dir / f"{name.split('@')[0]}.log", "wb")  # noqa: SIM115
            consume = ["--tenants", tenants] if tenants else ["--queues", queue] if queue else []
            self.processes[name] = subprocess.Popen(
                [*command, "--name", name, *consume],
                env=env or self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=dies_with_parent(),  # none left behind if pytest itself is killed
            )
            names.append(name)
        if wait:
            for name in names:
                self.wait_ready(name)
        return names

    def wait_ready(self, name: str) -> None:
        """Until the pool process has loaded its model and the worker consumes."""
        deadline = time.monotonic() + WORKER_READY_TIMEOUT
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                raise AssertionError(f"worker {name} exited: {self.log(name)[-3000:]}")
            if self.store.redis.exists(worker_key(name)) and "ready." in self.log(name):
                return
            time.sleep(0.2)
        raise AssertionError(f"worker {name} not ready: {self.log(name)[-3000:]}")

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name.split('@')[0]}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        stop_process_groups(self.processes.values(), grace_seconds=30)


@pytest.fixture
def workers(cli_env: dict, store: JobStore, tmp_path: Path) -> Iterator[Workers]:
    log_dir = tmp_path / "worker-logs"
    log_dir.mkdir()
    pool = Workers(cli_env, log_dir, store)
    yield pool
    pool.stop_all()


def wait_until(
    predicate, timeout: float = 240.0, step: float = 0.02, message: str = "timed out"
) -> object:
    """Poll `predicate` until it returns something true (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, message
        time.sleep(step)
    return result


def submit(tmp_path: Path, env: dict, records: list[object], *flags: str, out: str = "out") -> str:
    """`m3pipe submit` of `records` (written as corpus.jsonl) to tmp_path/OUT: the job id."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", records)
    result = run_cli("submit", str(corpus), "--out", str(tmp_path / out), *flags, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def write_jsonl(path: Path, records: list[object]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def corpus_records(count: int, seed: int = 0, long: bool = True) -> list[dict[str, str]]:
    """`count` documents of mixed lengths and scripts, ids doc-00000...: the first twelve are
    tests.corpus.mixed_texts, two of them thousands of tokens long (one over max_length);
    after them the texts repeat with those two cut to 60 words (each whole repeat would
    cost ~2 CPU-s of encoding on random:tiny and prove nothing the first did not).
    `long=False`: cut from the first, for shards of even length (~90 tokens a document)."""
    from pipeline.testing.corpora import mixed_texts

    texts = mixed_texts(seed)
    short = [" ".join(t.split()[:60]) for t in texts]
    return [
        {"id": f"doc-{i:05d}", "text": (texts if long and i < 12 else short)[i % 12] + f" #{i}"}
        for i in range(count)
    ]
