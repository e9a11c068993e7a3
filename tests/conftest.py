"""Shared fixtures: random models built once per session in a private cache."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import MutableMapping
from pathlib import Path

import pytest

# Bytecode is cached (in __pycache__, git-ignored) whatever PYTHONDONTWRITEBYTECODE says
# (these machines set it): otherwise every process the suite starts (a worker, a command, a
# benchmark) compiles m3pipe's modules from source again, ~0.5 s of CPU each, and pytest
# rewrites every test module again on every run.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# The suite computes in fp32, FlagEmbedding's exact mode, whatever M3PIPE_PRECISION says
# where it runs: its comparisons across paths (queue vs local, CLI vs engine) need arithmetic
# that does not depend on batch makeup. tests/pipeline/engine/test_precision.py covers the choice.
os.environ["M3PIPE_PRECISION"] = "fp32"


def share_the_cores(environ: MutableMapping[str, str] = os.environ) -> None:
    """pytest-xdist's processes share the cores instead of each running torch on all of them
    (as `m3pipe run`'s CPU workers do, pipeline/ops/worker_process.py): two or three
    processes each with an OpenMP thread per core left threads spinning at every barrier for
    a core another process held. The fast tier on 2 cores, `-n 2`: 60-69 s and 105-112 s of
    CPU with a thread per core, 45-46 s and 72-74 s with one. Set before torch loads;
    processes the tests start inherit it; a value the user set is kept."""
    from pipeline.ops.worker_process import threads_each  # no torch in its imports

    workers = int(environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        environ.setdefault("OMP_NUM_THREADS", str(threads_each(workers)))


share_the_cores()


# The GPU check's dry run is one test of 2-4 minutes: started last, it would hold the
# whole run while the other process idles.
LONGEST_FIRST = ("tests/integration/test_gpu_check.py",)


def pytest_configure(config: pytest.Config) -> None:
    """`--dist loadfile` hands out files in the order pytest_collection_modifyitems leaves
    them (pytest-xdist would otherwise sort them by how many tests each holds).

    The suite computes in fp32, the exact mode, unless a test asks otherwise: what it checks
    is exact (parity with FlagEmbedding, outputs of a worker against those of an encode),
    and `--precision auto` would be bf16 on a CPU with native bf16 and fp32 on another,
    making the same test machine-dependent. Workers and commands the tests start inherit
    it. test_precision.py tests what auto chooses."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    os.environ.setdefault("M3PIPE_PRECISION", "fp32")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration/, and every test marked `slow` (seconds of CPU
    each, marked where they are), is in the integration tier (`-m integration`);
    `-m "not integration"` is the fast tier. CI runs everything on three processes, a file at a
    time each (`--dist loadfile`): a file's tests share its fixtures and run in order.
    Files go out longest first (the GPU check's dry run, then the integration tier, whose
    files take 10-120 s, then the rest), so that neither process ends with a long file
    while the other has finished."""
    for item in items:
        if "tests/integration/" in str(item.path) or item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.integration)

    def rank(item: pytest.Item) -> int:
        path = item.path.as_posix()
        if path.endswith(LONGEST_FIRST):
            return 0
        return 1 if "tests/integration/" in path else 2

    items.sort(key=rank)  # stable: each file's tests keep their order


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the run, shared by pytest-xdist's processes (each random model is then
    built once, not once a process); M3PIPE_TEST_CACHE_DIR may point at a warm one."""
    configured = os.environ.get("M3PIPE_TEST_CACHE_DIR")
    if configured:
        cache = Path(configured)
    elif os.environ.get("PYTEST_XDIST_WORKER"):  # basetemp/.. is the run's, shared
        cache = tmp_path_factory.getbasetemp().parent / "m3pipe-cache"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("m3pipe-cache")
    os.environ["M3PIPE_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def load(model_cache: Path):
    """load(size) -> M3Model on CPU, cached per size."""
    from pipeline.engine.model import load_model

    loaded: dict[str, object] = {}

    def _load(size: str):
        if size not in loaded:
            loaded[size] = load_model(
                f"random:{size}", device="cpu", precision="fp32", cache_dir=model_cache
            )
        return loaded[size]

    return _load


@pytest.fixture(scope="session")
def tiny(load):
    return load("tiny")


@pytest.fixture
def redis_server():
    """A real redis-server on a private unix socket, removed afterwards."""
    from pipeline.ops.embedded_redis import EmbeddedRedis

    # A short directory: unix socket paths are limited to about 100 bytes.
    directory = Path(f"/tmp/m3t-{uuid.uuid4().hex[:8]}")
    with EmbeddedRedis(directory) as server:
        yield server
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def store(redis_server, monkeypatch):
    from pipeline.broker.redis_url import connect
    from pipeline.jobs import orphans
    from pipeline.jobs.store import JobStore

    # No message is on its way between the two looks for orphans here: a second's pause
    # (for a live queue) would only slow `status` and `wait`.
    monkeypatch.setattr(orphans, "SETTLE_SECONDS", 0.05)
    return JobStore(connect(redis_server.url))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """One local S3-compatible server (moto) for the session."""
    from pipeline.testing.s3_server import S3Server

    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A new bucket on the S3 server, with this process's AWS_* variables pointing at it."""
    from pipeline.testing.s3_server import Bucket

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return Bucket(s3_server)
