"""What a model's content fingerprint costs (pipeline/engine/fingerprint.py): the first
hash of a weights file of bge-m3's size, and every later load's look-up of the cached digest.

The weights are random bytes written to a temp directory (what is hashed does not change the
rate); the file is read from the page cache, as a worker's load right after a download does.

    python benchmarks/bench_fingerprint.py --gib 2.27
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import run_facts, save  # noqa: E402


def write_model_dir(directory: Path, gib: float) -> int:
    size = int(gib * (1 << 30))
    block = os.urandom(64 << 20)
    with open(directory / "model.safetensors", "wb") as handle:
        left = size
        while left > 0:
            handle.write(block[: min(left, len(block))])
            left -= len(block)
    for name in ("config.json", "tokenizer.json", "colbert_linear.pt", "sparse_linear.pt"):
        (directory / name).write_bytes(os.urandom(1 << 20))
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.27, help="weights size (bge-m3: 2.27)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="save the JSON here (default: print only)")
    args = parser.parse_args()

    from pipeline.engine import fingerprint

    with tempfile.TemporaryDirectory() as tmp:
        model, cache = Path(tmp) / "model", Path(tmp) / "cache"
        model.mkdir()
        size = write_model_dir(model, args.gib)
        first, cached, memo = [], [], []
        for _ in range(args.repeats):
            for folder in (cache / "fingerprints",):
                for entry in folder.glob("*.json") if folder.exists() else ():
                    entry.unlink()
            fingerprint._memo.clear()
            started = time.perf_counter()
            value = fingerprint.fingerprint_model_dir(model, cache)
            first.append(time.perf_counter() - started)
            fingerprint._memo.clear()  # a new process: digests from the cache directory
            started = time.perf_counter()
            assert fingerprint.fingerprint_model_dir(model, cache) == value
            cached.append(time.perf_counter() - started)
            started = time.perf_counter()
            fingerprint.fingerprint_model_dir(model, cache)  # the same process again
            memo.append(time.perf_counter() - started)
    report = {
        **run_facts(),
        "weights_bytes": size,
        "first_hash_s": round(min(first), 4),
        "first_hash_gb_per_s": round(size / min(first) / 1e9, 3),
        "cached_lookup_s": round(min(cached), 6),
        "in_process_s": round(min(memo), 6),
    }
    print(
        f"weights {size / 1e9:.2f} GB: first hash {report['first_hash_s']:.2f} s "
        f"({report['first_hash_gb_per_s']} GB/s), "
        f"later loads {report['cached_lookup_s'] * 1e3:.2f} ms (cache directory), "
        f"{report['in_process_s'] * 1e3:.3f} ms (same process)"
    )
    if args.out:
        save(report, "fingerprint", "cpu", "synthetic", args.out)


if __name__ == "__main__":
    main()
