"""What a run pays to know what it is and where it writes: the model's content fingerprint
(pipeline/engine/fingerprint.py: the first hash of weights of bge-m3's size, then every
later load's look-up of the cached digest) and the output directory's lease
(pipeline/storage/output_lease.py: taken once, checked before each part, renewed every 20 s).

The weights are random bytes written to a temp directory (what is hashed does not change the
rate); the file is read from the page cache, as a worker's load right after a download does.

    python -m benchmarks.bench_identity --gib 2.27
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.report import run_facts, save


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


def time_lease(directory: Path, checks: int = 2000, renewals: int = 100) -> tuple[float, ...]:
    """Seconds to take the lease, to check it once, to renew it once (best of the runs)."""
    from pipeline.storage.location import open_location
    from pipeline.storage.output_lease import take_lease

    directory.mkdir()
    out = open_location(directory)
    started = time.perf_counter()
    lease = take_lease(out, command="bench")
    take = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(checks):
        lease.check()
    check = (time.perf_counter() - started) / checks
    started = time.perf_counter()
    for _ in range(renewals):
        lease.renew()
    renew = (time.perf_counter() - started) / renewals
    lease.release()
    return take, check, renew


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
        lease_take, lease_check, lease_renew = time_lease(Path(tmp) / "out")
    report = {
        **run_facts(),
        "lease_take_ms": round(lease_take * 1e3, 3),
        "lease_check_us": round(lease_check * 1e6, 1),
        "lease_renew_ms": round(lease_renew * 1e3, 3),
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
    print(
        f"output lease: taken in {report['lease_take_ms']} ms, checked in "
        f"{report['lease_check_us']} us (before each part), renewed in "
        f"{report['lease_renew_ms']} ms (every 20 s)"
    )
    if args.out:
        save(report, "identity", "cpu", "synthetic", args.out)


if __name__ == "__main__":
    main()
