"""Run README.md's command blocks as a newcomer would, in order, offline: CI keeps them true.

Every ```bash block of README.md must be known here by its first line: run as written, run
with the substitutions a machine without a cluster needs (a local Redis for
`redis-host:6379`, CPU workers for GPU indexes, a corpus and a shared directory in the
scratch directory), or skipped with the reason. A block that is new or whose first line
changed fails the run until it is listed. Each block runs with `bash -e` from a scratch
directory holding `examples/`, after the blocks before it, so later blocks see earlier output.

    python .ci/readme_blocks.py          # from the repository root, in the installed venv
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Plan:
    action: str  # "run", "cluster" (run with a local Redis and CPU workers) or "skip"
    why: str = ""
    only_lines: tuple[int, ...] | None = None  # run these lines of the block, skip the rest
    env: dict[str, str] = field(default_factory=dict)
    # Paths outside the scratch directory that the block creates: removed before (a run
    # before this one may have left them: make-test-model refuses to overwrite) and after.
    creates: tuple[str, ...] = ()


# Keyed by each block's first line, as README.md has it.
PLANS: dict[str, Plan] = {
    "python3 -m venv .venv && . .venv/bin/activate": Plan("skip", "the install: CI just did it"),
    "m3pipe run examples/corpus.jsonl --out out/example --model random:small": Plan("run"),
    "export M3PIPE_BROKER_URL=redis://:PASSWORD@redis-host:6379/0   # every machine, same URL": Plan(  # noqa: E501
        "cluster",
        "a local redis-server with the password PASSWORD stands for redis-host; the model "
        "is random:small, as the block says to try it offline; the two GPU workers run on "
        "the CPU",
        env={"M3PIPE_RERANK_MODEL": "random:small"},
    ),
    "m3pipe autoscale --devices 0,1,2,3 --cooldown 120     # or --devices cpu:2 without GPUs": Plan(
        "skip",
        "servers that run until stopped (tests/integration/test_autoscale.py, "
        "test_flower.py run them)",
    ),
    "export REDIS_PASSWORD=$(openssl rand -hex 16) FLOWER_AUTH=admin:$(openssl rand -hex 12)": Plan(
        "skip", "no Docker engine on these machines (tests/deploy/test_compose.py)"
    ),
    "export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...   # or AWS_PROFILE, or a pod/instance role": Plan(  # noqa: E501
        "skip",
        "needs an object store and its credentials "
        "(tests/integration/test_object_storage.py runs a local one)",
    ),
    "m3pipe rerank examples/pairs.jsonl --out out/scores --model random:small   # local, no queue": Plan(  # noqa: E501
        "run", "the second line submits to a cluster's queue", only_lines=(0,)
    ),
    "m3pipe encode examples/search/corpus.jsonl --out out/idx --model random:tiny": Plan("run"),
    "m3pipe encode examples/corpus.jsonl --out out/example-local --model random:small": Plan("run"),
    "m3pipe make-test-model /tmp/m3-tiny --size tiny --seed 0": Plan(
        "run", creates=("/tmp/m3-tiny",)
    ),
    'python -m pytest -q -m "not integration" -n 2  # the fast tier: about a minute on 2 cores': Plan(  # noqa: E501
        "skip", "the tests and benchmarks: CI runs the tests itself"
    ),
}


def blocks(readme: str) -> list[tuple[int, str]]:
    """(line number, text) of each ```bash block."""
    return [
        (readme[: m.start()].count("\n") + 2, m.group(1))
        for m in re.finditer(r"```bash\n(.*?)```", readme, re.S)
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cluster_script(text: str, port: int) -> str:
    """The cluster block for one machine: the local Redis, CPU workers, a scratch corpus and
    shared directory; the background workers stopped when it ends."""
    text = text.replace("redis-host:6379", f"127.0.0.1:{port}")
    text = text.replace("M3PIPE_MODEL=BAAI/bge-m3", "M3PIPE_MODEL=random:small")
    text = re.sub(
        r"m3pipe worker --device (\d) &", r"m3pipe worker --device cpu --name gpu\1@ci &", text
    )
    text = text.replace("/shared/", "$PWD/shared/")
    prelude = (
        "mkdir -p corpus shared\n"
        "python -c 'import pyarrow as pa, shutil; "
        'shutil.copyfileobj(open("examples/corpus.jsonl", "rb"), '
        'pa.CompressedOutputStream("corpus/part-0.jsonl.zst", "zstd"))\'\n'
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n"
    )
    return prelude + text


def main() -> int:
    readme = (ROOT / "README.md").read_text()
    found = blocks(readme)
    unknown = [
        (line, text.splitlines()[0]) for line, text in found if text.splitlines()[0] not in PLANS
    ]
    if unknown:
        for line, first in unknown:
            print(f"README.md:{line}: block not known to .ci/readme_blocks.py: {first!r}")
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="m3pipe-readme-"))
    (scratch / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "M3PIPE_CACHE_DIR": str(scratch / "cache")}
    env.pop("M3PIPE_BROKER_URL", None)
    redis = None
    failed = 0
    try:
        for line, text in found:
            plan = PLANS[text.splitlines()[0]]
            if plan.action == "skip":
                print(f"README.md:{line}: skipped: {plan.why}")
                continue
            script = text
            if plan.only_lines is not None:
                lines = text.splitlines()
                script = "\n".join(lines[i] for i in plan.only_lines) + "\n"
            if plan.action == "cluster":
                from pipeline.ops.embedded_redis import EmbeddedRedis

                port = free_port()
                redis = EmbeddedRedis(scratch / "redis", port=port, password="PASSWORD").start()
                script = cluster_script(script, port)
            for path in plan.creates:
                shutil.rmtree(path, ignore_errors=True)
            started = time.monotonic()
            proc = subprocess.run(["bash", "-e", "-c", script], cwd=scratch,
                                  env={**env, **plan.env}, capture_output=True, text=True,
                                  timeout=900)  # fmt: skip
            took = time.monotonic() - started
            if proc.returncode != 0:
                failed += 1
                print(f"README.md:{line}: FAILED (exit {proc.returncode}) in {took:.0f}s")
                print(proc.stdout[-3000:] + proc.stderr[-3000:])
            else:
                note = f" ({plan.why})" if plan.why else ""
                print(f"README.md:{line}: ran in {took:.0f}s{note}")
            for path in plan.creates:
                shutil.rmtree(path, ignore_errors=True)
            if redis is not None:
                redis.stop()
                redis = None
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    ran = sum(PLANS[t.splitlines()[0]].action != "skip" for _, t in found)
    print(f"{ran - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
