"""Peak memory of one giant record: a JSONL line of N MB through `m3pipe encode` (truncated
to its window: only a prefix is tokenized) and through `m3pipe submit` (rejected at the
message limit), and a gzip that inflates to G GB without a newline (rejected at
--max-record-bytes while read). Each command's peak RSS is its own (ru_maxrss of a wrapper
whose only child it is). tests/integration/test_giant_records.py holds the 2 GB bound.

    python -m benchmarks.bench_giant_records --record-mb 200 --gzip-gb 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import run_facts, save

_WRAPPER = (
    "import resource, subprocess, sys; "
    "code = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); "
    "sys.exit(code)"
)


def measure(args: list[str], env: dict[str, str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    return {
        "exit_code": proc.returncode,
        "peak_rss_mb": int(proc.stdout.strip().splitlines()[-1]),
        "seconds": round(time.perf_counter() - started, 1),
    }


def giant_jsonl(path: Path, megabytes: int) -> int:
    words = "giant record words " * ((1 << 20) // 19 + 1)
    with open(path, "w") as out:
        out.write('{"id": "giant", "text": "')
        for _ in range(megabytes):
            out.write(words[: 1 << 20])
        out.write('"}\n')
    return path.stat().st_size


def bomb(path: Path, gigabytes: int) -> int:
    block = b"x" * (64 << 20)
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(b'{"id": "bomb", "text": "')
        for _ in range(gigabytes * 16):
            out.write(block)
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record-mb", type=int, default=200)
    parser.add_argument("--gzip-gb", type=int, default=2)
    parser.add_argument("--model", default="random:tiny")
    parser.add_argument("--broker", help="a Redis URL for the submit side (default: started here)")
    parser.add_argument(
        "--out", type=Path, help="JSON path (default: benchmarks/.results/, git-ignored)"
    )
    args = parser.parse_args()

    from pipeline.ops.embedded_redis import EmbeddedRedis

    with (
        tempfile.TemporaryDirectory(prefix="m3b-", dir="/tmp") as tmp,
        EmbeddedRedis(Path(tmp) / "redis") as redis,
    ):
        root = Path(tmp)
        env = {**os.environ, "M3PIPE_MODEL": args.model, "HF_HUB_OFFLINE": "1",
               "M3PIPE_BROKER_URL": args.broker or redis.url}  # fmt: skip
        record = root / "giant.jsonl"
        record_bytes = giant_jsonl(record, args.record_mb)
        limit = ["--max-record-bytes", str(record_bytes + 1024)]
        encode = ["encode", str(record), "--out", str(root / "e"), "-q", "--max-length", "512"]
        sides = {
            "encode_truncate": measure([*encode, *limit], env),
            "submit": measure(["submit", str(record), "--out", str(root / "s"), *limit], env),
        }
        gz = root / "bomb.jsonl.gz"
        bomb_bytes = bomb(gz, args.gzip_gb)
        sides["encode_gzip_bomb"] = measure(["encode", str(gz), "--out", str(root / "g")], env)
        sides["submit_gzip_bomb"] = measure(["submit", str(gz), "--out", str(root / "h")], env)
    report = {
        "benchmark": "giant_records",
        "model": args.model,
        "record_bytes": record_bytes,
        "gzip_bytes": bomb_bytes,
        "gzip_inflated_bytes": args.gzip_gb << 30,
        "sides": sides,
        **run_facts(),
    }
    for name, side in sides.items():
        print(f"{name:18} exit {side['exit_code']}  peak RSS {side['peak_rss_mb']:6,} MB  "
              f"{side['seconds']:6.1f} s")  # fmt: skip
    print(json.dumps(report))
    save(report, "giant-records", "cpu", args.model, args.out)


if __name__ == "__main__":
    main()
